"""The task model, its state machine and the ports that adapters implement. No I/O here."""
