"""Backends that run circuits. They run inside worker child processes, never on an event loop."""
