"""What the client returns: a task's state as a small immutable object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskStatus = Literal["pending", "completed", "error"]


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A task as the server last described it.

    `counts` is set when completed (keys exactly as Qiskit's get_counts() gives them); `error`
    is the server's message when the task failed or was cancelled.
    """

    id: str
    status: TaskStatus
    counts: dict[str, int] | None = None
    error: str | None = None
    # When the task was submitted (epoch seconds); set in listings only.
    created_at: float | None = None
    # Each shot's bitstring (keys as in `counts`), for tasks submitted with memory=True.
    memory: list[str] | None = None

    @property
    def done(self) -> bool:
        """The task has ended (completed or error): it will not change any more."""
        return self.status != "pending"

    @property
    def ok(self) -> bool:
        """The task completed and has counts."""
        return self.status == "completed"


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a listing, newest first; pass `next_cursor` to list() for the next page
    (None after the last)."""

    tasks: list[TaskResult]
    next_cursor: str | None
