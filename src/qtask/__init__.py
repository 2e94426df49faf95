"""qtask: run quantum circuits asynchronously, durably and fast."""

__version__ = "0.1.0"
