"""Circuit ingestion: detect the OpenQASM version, check what a circuit may do, parse it once."""
