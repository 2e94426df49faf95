"""The single error tree of qtask. Every error a caller may handle derives from QTaskError.

Adapters wrap their drivers' exceptions in these; the API maps them to HTTP answers in one place.
"""

from __future__ import annotations

import math


class QTaskError(Exception):
    """Raised for any failure qtask knows how to describe."""


class ConfigError(QTaskError):
    """Raised when the configuration is invalid; the message names the setting."""


class InvalidRequestError(QTaskError):
    """Raised when a request is malformed: it can never succeed as sent (HTTP 400/422)."""

    status_code = 400

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the body (none by default)."""
        return {}


class PayloadTooLargeError(InvalidRequestError):
    """Raised when a request or a circuit is over a configured size limit (HTTP 413)."""

    status_code = 413


class CircuitError(InvalidRequestError):
    """Raised when a circuit cannot be parsed or is not allowed; the message says where and why."""

    status_code = 400


class CircuitTooLargeError(CircuitError):
    """Raised when a circuit is over a qubit, operation or memory limit."""

    status_code = 422


class UnknownBackendError(InvalidRequestError):
    """Raised when a submission names a backend that is not configured; the message lists those
    that are (HTTP 422)."""

    status_code = 422


class BackendLimitError(InvalidRequestError):
    """Raised when a circuit is over a limit of the backend it names: qubits or shots (422)."""

    status_code = 422


class TaskConflictError(InvalidRequestError):
    """Raised when the task's state does not allow the request, e.g. cancelling a running task."""

    status_code = 409


class RequestTimeoutError(InvalidRequestError):
    """Raised when a request body does not arrive in time (slow or stalled client, HTTP 408)."""

    status_code = 408


class UnauthorizedError(InvalidRequestError):
    """Raised when API keys are on and the request has none, or one that is not valid."""

    status_code = 401

    @property
    def headers(self) -> dict[str, str]:
        """RFC 9110: a 401 names the scheme the client should use."""
        return {"WWW-Authenticate": 'Bearer realm="qtask"'}


class TooManyRequestsError(InvalidRequestError):
    """Raised when a key is over its request rate or its number of pending tasks (HTTP 429)."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        """Retry-After in whole seconds, at least 1."""
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class PendingCapError(TooManyRequestsError):
    """Raised when storing tasks would take an API key over its cap of queued or running tasks.

    Stores raise it from inside their create step, so the cap holds however many submissions
    arrive at once; tasks found under their idempotency key are not new and never count.
    """

    # Tasks end when they end, so when to retry is a guess.
    RETRY_AFTER_S = 5.0

    def __init__(self, owner: str, pending: int, cap: int) -> None:
        super().__init__(
            f"Too many pending tasks: key '{owner}' has {pending} queued or running, and "
            f"may have at most {cap}; retry when some have finished.",
            self.RETRY_AFTER_S,
        )
        self.owner = owner
        self.pending = pending
        self.cap = cap


class TaskNotFoundError(QTaskError):
    """Raised when no task has the given id (or the caller may not see it)."""


class InvalidTransitionError(QTaskError):
    """Raised when a task is asked to move to a state its state machine does not allow."""


class StoreUnavailableError(QTaskError):
    """Raised when the task store cannot be reached or cannot commit (HTTP 503)."""


class QueueUnavailableError(QTaskError):
    """Raised when the task queue (NATS) cannot be reached; stored tasks are published later."""


class ObjectStoreUnavailableError(QTaskError):
    """Raised when the object store cannot be read or written."""


class ExecutionError(QTaskError):
    """Raised when a circuit fails while running on a backend; the task ends in error."""


class ShuttingDownError(QTaskError):
    """Raised when work is refused because the process is shutting down."""


class RemoteRejectedError(ExecutionError):
    """Raised when a remote provider refuses a job for good (a 4xx answer); the task ends in
    error with the provider's message."""


class RemoteUnavailableError(QTaskError):
    """Raised when a remote provider cannot be reached or answers with a server error; the
    call is tried again later."""


class MeshPeerError(QTaskError):
    """Raised when a mesh call to a peer fails; the subclasses say how."""


class PeerUnreachableError(MeshPeerError):
    """Raised when a peer cannot be dialled, or its connection or stream breaks mid-request (a
    killed peer)."""


class PeerTimeoutError(MeshPeerError):
    """Raised when a peer does not answer a request within its timeout (a hung peer)."""


class MeshProtocolError(MeshPeerError):
    """Raised when a peer does not speak a protocol, or a frame or reply breaks the wire
    contract (too large, not the expected message)."""
