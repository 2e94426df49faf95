"""The application layer: qtask's use cases, independent of HTTP, of the process and of the
adapters."""
