"""The task model, its state machine, the ports that adapters implement, the execution backend
port and the object store's key layout. No I/O here.

Nothing of qtask's outer rooms (application, API, worker, adapters, execution, settings) and
no framework or driver (Qiskit, FastAPI, Redis, NATS, obstore) is imported here: an import
contract keeps it so.
"""
