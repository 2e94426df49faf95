"""What the sync and async clients share and that does no I/O: configuration, request bodies,
the retry policy, and turning answers into results or typed errors.

Must not import anything of the server (tests/unit/test_client_packaging.py checks it).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from qtask import __version__
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
)
from qtask.client.models import Backend, TaskPage, TaskResult

DEFAULT_URL = "http://127.0.0.1:8000"
MSG_NOT_FOUND = "Task not found."  # the API contract's body for an unknown id
MAX_BATCH = 1000  # the API's limit of circuits per POST /tasks/batch
MAX_IDS_PER_READ = 256  # the API's limit of ids per GET /tasks?ids=
# Long polls: the longest wait asked of the server per request, below the idle timeouts of
# common proxies (and the server's own limit of 60 s); and the wait per request while a
# progress bar wants news of each task that ends (the server answers a batch when all ended).
LONG_POLL_S = 25.0
PROGRESS_POLL_S = 1.0
# A long poll that came back pending before this share of its wait was up came from a server
# that does not long-poll (it ignores `wait`): the client then polls on its schedule instead.
LONG_POLL_EARLY = 0.9
# Answers worth the same request again: the server stored nothing (503: store or shutdown;
# 502/504: a proxy in front) or asks to slow down (429, with Retry-After).
RETRY_STATUS = frozenset({429, 502, 503, 504})
# Messages of 400/422 on a submission that are about the request, not the circuit.
# An old server (no GET /backends) ignores `backend`: the task would run on its simulator.
NO_BACKENDS = (
    "this server has no backends to choose from (GET /backends answers 404), so a backend "
    "cannot be named; leave `backend` out to run on the server's simulator"
)
_REQUEST_PROBLEMS = ("Invalid request", "The request body", "The client disconnected")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call is repeated after a transport error, 429 or 503.

    Safe for every call: reads and cancels are idempotent, and each submission carries an
    Idempotency-Key reused across its retries, so a retry never makes a second task.
    """

    attempts: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    # A Retry-After longer than this is not waited for: the error goes to the caller.
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
        if retry_after_s is not None:
            return retry_after_s
        # Full jitter: many clients retrying after one outage do not come back in step.
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Config:
    """Where the server is and how to call it."""

    base_url: str
    headers: dict[str, str]
    timeout_s: float
    retry: RetryPolicy


def make_config(
    url: str | None, api_key: str | None, timeout_s: float, retry: RetryPolicy | None
) -> Config:
    """Arguments first, then QTASK_URL / QTASK_API_KEY, then the default URL."""
    base_url = (url or os.environ.get("QTASK_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("QTASK_API_KEY")
    headers = {"User-Agent": f"qtask-client/{__version__}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return Config(base_url, headers, timeout_s, retry or RetryPolicy())


def submission(
    circuit: Any, shots: int | None, seed: int | None, backend: str | None, memory: bool = False
) -> dict[str, Any]:
    """One circuit as POST /tasks takes it; unset fields are left to the server's defaults."""
    body: dict[str, Any] = {"qc": to_qasm(circuit)}
    if shots is not None:
        body["shots"] = shots
    if seed is not None:
        body["seed"] = seed
    if backend is not None:
        body["backend"] = backend
    if memory:
        body["memory"] = True
    return body


def batches(items: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The submissions in requests of at most MAX_BATCH circuits."""
    for start in range(0, len(items), MAX_BATCH):
        yield list(items[start : start + MAX_BATCH])


def id_chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    """The ids in reads of at most MAX_IDS_PER_READ."""
    for start in range(0, len(ids), MAX_IDS_PER_READ):
        yield list(ids[start : start + MAX_IDS_PER_READ])


def retry_after(response: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds (the delta form qtask sends), or None."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def message_of(response: httpx.Response) -> str:
    """The contract's `message`, or the raw text when the body is not the contract's."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.text.strip()


def error_for(
    response: httpx.Response, *, task_id: str | None = None, submitting: bool = False
) -> ClientError:
    """The typed error for a refusal; `submitting` marks POST /tasks(/batch) answers."""
    code = response.status_code
    message = message_of(response)
    if code == 404 and task_id is not None:
        return NotFoundError(task_id, message)
    if code == 401:
        return UnauthorizedError(message, code)
    if code == 409:
        return ConflictError(message, code)
    if code == 429:
        return RateLimitedError(message, retry_after(response))
    if code in (502, 503, 504):
        return ServerUnavailableError(message, code)
    if code >= 500:
        return ServerError(message, code)
    if submitting and code in (400, 413, 422) and not message.startswith(_REQUEST_PROBLEMS):
        return InvalidCircuitError(message, code)
    return InvalidRequestError(message, code)


def result_of(task_id: str, body: Any) -> TaskResult:
    """A task body of the contract (GET /tasks/{id}, an item of GET /tasks) as a TaskResult."""
    status = body.get("status") if isinstance(body, dict) else None
    created = body.get("created_at") if isinstance(body, dict) else None
    created_at = float(created) if isinstance(created, int | float) else None
    if status == "completed":
        shots = body.get("memory")
        memory = [str(bits) for bits in shots] if isinstance(shots, list) else None
        return TaskResult(
            task_id, "completed", counts=dict(body["result"]), created_at=created_at, memory=memory
        )
    if status == "pending":
        return TaskResult(task_id, "pending", created_at=created_at)
    if status == "error":
        if body.get("message") == MSG_NOT_FOUND:
            raise NotFoundError(task_id)
        message = str(body.get("message", ""))
        return TaskResult(task_id, "error", error=message, created_at=created_at)
    raise ServerError(f"unexpected task body for {task_id}: {body!r}")


def backends_of(response: httpx.Response) -> list[Backend]:
    """GET /backends' answer as Backend models, the default first; UnsupportedError when the
    server predates backends (404)."""
    if response.status_code == 404:
        raise UnsupportedError(NO_BACKENDS, 404)
    body = response.json()
    default = body.get("default")
    found = [_backend_of(item, default) for item in body.get("backends", [])]
    return sorted(found, key=lambda backend: not backend.default)


def _backend_of(item: dict[str, Any], default: object) -> Backend:
    coupling = item.get("coupling_map")
    gates = item.get("basis_gates")
    max_shots = item.get("max_shots")
    noise = item.get("noise")
    return Backend(
        name=str(item["name"]),
        kind=str(item.get("kind", "local")),
        default=bool(item.get("default", item["name"] == default)),
        num_qubits=int(item.get("num_qubits") or 0),
        max_qubits={str(k): int(v) for k, v in (item.get("max_qubits") or {}).items()},
        basis_gates=None if gates is None else [str(g) for g in gates],
        coupling_map=None if coupling is None else [(int(a), int(b)) for a, b in coupling],
        noise=None if noise is None else str(noise),
        max_shots=None if max_shots is None else int(max_shots),
        memory=bool(item.get("memory", False)),
        seeds=bool(item.get("seeds", False)),
        cancel=bool(item.get("cancel", False)),
        health=str(item.get("health", "ok")),
    )


def list_params(
    status: str | Sequence[str] | None, limit: int | None, cursor: str | None
) -> dict[str, str]:
    """The query of GET /tasks (a listing)."""
    params: dict[str, str] = {}
    if status is not None:
        params["status"] = status if isinstance(status, str) else ",".join(status)
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return params


def page_of(body: Any) -> TaskPage:
    """A listing's answer as a TaskPage."""
    tasks = [result_of(str(item["task_id"]), item) for item in body["tasks"]]
    cursor = body.get("next_cursor")
    return TaskPage(tasks, None if cursor is None else str(cursor))


def poll_wait(pending: int, left: float | None, progress: bool) -> float | None:
    """The `wait` of the next poll of `pending` tasks with `left` seconds to go (None: no
    deadline); None when too little is left to be worth a long poll."""
    wait = LONG_POLL_S if pending == 1 or not progress else PROGRESS_POLL_S
    if left is not None:
        wait = min(wait, left)
    return wait if wait >= 0.05 else None


def answered_early(wait: float | None, took: float) -> bool:
    """Whether a long poll that came back pending did so before its wait was up (the server
    does not long-poll, or could not be reached): poll on the schedule, not at once."""
    return wait is None or took < LONG_POLL_EARLY * wait


class WaitSchedule:
    """Seconds between polls while waiting: quick at first, then at most every `max_s`.

    Used after a poll that did not wait on the server (an older server without long polls,
    or one that could not be reached); a long poll that ran its course is repeated at once.
    """

    def __init__(self, first_s: float = 0.05, factor: float = 1.5, max_s: float = 1.0) -> None:
        self._next = first_s
        self._factor = factor
        self._max = max_s

    def next_delay(self) -> float:
        """The pause before the next poll."""
        delay = self._next
        self._next = min(self._max, self._next * self._factor)
        return delay
