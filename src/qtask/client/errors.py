"""The client's errors: one tree under ClientError (itself a QTaskError), one class per answer.

Every error the client raises for an HTTP answer carries the server's message and status code;
transport failures that outlast the retries become ServerUnavailableError.
"""

from __future__ import annotations

import re

from qtask.errors import QTaskError

_WHERE = re.compile(r"line (\d+), column (\d+)")
_BATCH_ITEM = re.compile(r"^tasks\[(\d+)\]: ")


class ClientError(QTaskError):
    """Raised for any failure of a qtask client call; `status_code` is None without an answer."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class InvalidRequestError(ClientError):
    """Raised when the server refuses a request as malformed or over a limit (400/408/413/422)."""


class InvalidCircuitError(InvalidRequestError):
    """Raised when the server refuses a circuit; `line`/`column` say where, when it knows.

    In a batch, `index` is the position of the refused circuit (nothing of the batch was stored).
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message, status_code)
        item = _BATCH_ITEM.match(message)
        self.index: int | None = int(item[1]) if item else None
        where = _WHERE.search(message)
        self.line: int | None = int(where[1]) if where else None
        self.column: int | None = int(where[2]) if where else None


class UnauthorizedError(ClientError):
    """Raised when API keys are on and the call had no valid key (401)."""


class NotFoundError(ClientError):
    """Raised when no task has the id, or it is another key's (404)."""

    def __init__(self, task_id: str, message: str = "Task not found.") -> None:
        super().__init__(f"{message} ({task_id})", 404)
        self.task_id = task_id


class ConflictError(ClientError):
    """Raised when the task's state does not allow the call, e.g. cancelling an ended task (409)."""


class RateLimitedError(ClientError):
    """Raised when the key stays over its rate or pending-task cap after the client's retries."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message, 429)
        self.retry_after_s = retry_after_s


class ServerUnavailableError(ClientError):
    """Raised when the server cannot be reached or answers 502/503/504 after every retry."""


class ServerError(ClientError):
    """Raised when the server fails with an internal error (500)."""


class UnsupportedError(ClientError):
    """Raised when the call needs a feature this server does not have (e.g. choosing a backend)."""


class WaitTimeoutError(ClientError):
    """Raised when wait() reaches its timeout with tasks still pending; `pending` names them."""

    def __init__(self, pending: list[str], timeout_s: float) -> None:
        shown = ", ".join(pending[:5]) + (" ..." if len(pending) > 5 else "")
        super().__init__(f"{len(pending)} task(s) still pending after {timeout_s:g} s: {shown}")
        self.pending = pending
