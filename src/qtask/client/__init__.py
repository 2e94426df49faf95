"""The Python client of qtask: `Client` (blocking) and `AsyncClient` (asyncio) over httpx.

    from qtask.client import Client
    with Client("http://127.0.0.1:8000") as qtask:
        result = qtask.wait(qtask.submit(bell_qasm, shots=1000), timeout=60)
        print(result.counts)

A client-only install (`pip install qtask`) has this package and the command line's client
commands; nothing here imports the server (Qiskit is imported only to write out a Qiskit
circuit the caller passed). `qtask.client.qiskit` (not imported here; `pip install
"qtask[qiskit]"`) is qtask as a Qiskit BackendV2. `backends()` lists what `backend=` may
name; against an older server without GET /backends both raise UnsupportedError rather than
let the task run silently on the server's simulator.
"""

from qtask.client._core import RetryPolicy
from qtask.client.async_ import AsyncClient
from qtask.client.circuits import to_qasm
from qtask.client.errors import (
    ClientError,
    ConflictError,
    InvalidCircuitError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    UnauthorizedError,
    UnsupportedError,
    WaitTimeoutError,
)
from qtask.client.models import Backend, TaskPage, TaskResult, TaskStatus
from qtask.client.sync import Client

__all__ = [
    "AsyncClient",
    "Backend",
    "Client",
    "ClientError",
    "ConflictError",
    "InvalidCircuitError",
    "InvalidRequestError",
    "NotFoundError",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailableError",
    "TaskPage",
    "TaskResult",
    "TaskStatus",
    "UnauthorizedError",
    "UnsupportedError",
    "WaitTimeoutError",
    "to_qasm",
]
