"""Backends that run circuits, and the catalog of the configured ones.

Local backends (Aer, ideal or with a device's noise) run inside worker child processes, never on
an event loop; remote ones (IBM Quantum, another qtask) submit and poll providers. `catalog`
builds the Backends port from the settings without importing Qiskit. Not here: stores, queues,
the API or use cases (an import contract); the worker and the poller call these.
"""
