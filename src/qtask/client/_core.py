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
)
from qtask.client.models import TaskResult

DEFAULT_URL = "http://127.0.0.1:8000"
MSG_NOT_FOUND = "Task not found."  # the API contract's body for an unknown id
MAX_BATCH = 1000  # the API's limit of circuits per POST /tasks/batch
MAX_IDS_PER_READ = 256  # the API's limit of ids per GET /tasks?ids=
# Answers worth the same request again: the server stored nothing (503: store or shutdown;
# 502/504: a proxy in front) or asks to slow down (429, with Retry-After).
RETRY_STATUS = frozenset({429, 502, 503, 504})
# Messages of 400/422 on a submission that are about the request, not the circuit.
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
    circuit: Any, shots: int | None, seed: int | None, backend: str | None
) -> dict[str, Any]:
    """One circuit as POST /tasks takes it; unset fields are left to the server's defaults."""
    body: dict[str, Any] = {"qc": to_qasm(circuit)}
    if shots is not None:
        body["shots"] = shots
    if seed is not None:
        body["seed"] = seed
    if backend is not None:
        body["backend"] = backend
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
    if status == "completed":
        return TaskResult(task_id, "completed", counts=dict(body["result"]))
    if status == "pending":
        return TaskResult(task_id, "pending")
    if status == "error":
        if body.get("message") == MSG_NOT_FOUND:
            raise NotFoundError(task_id)
        return TaskResult(task_id, "error", error=str(body.get("message", "")))
    raise ServerError(f"unexpected task body for {task_id}: {body!r}")


class WaitSchedule:
    """Seconds between polls while waiting: quick at first, then at most every `max_s`.

    The long-polling slice (`GET /tasks/{id}?wait=S`) will let the server hold the poll instead;
    the clients then send `wait` and poll again at once.
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
