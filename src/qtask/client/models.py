"""What the client returns: a task's state as a small immutable object."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend of GET /backends: what a submission's `backend=` may name.

    `num_qubits` is the most any simulation method takes (`max_qubits` per method);
    `basis_gates` and `coupling_map` are None for a simulator that takes any gate on any
    qubits; `noise` names the device whose noise model it applies; `health` is "ok" or why not.
    """

    name: str
    kind: str
    default: bool
    num_qubits: int
    max_qubits: dict[str, int] = field(default_factory=dict)
    basis_gates: list[str] | None = None
    coupling_map: list[tuple[int, int]] | None = None
    noise: str | None = None
    max_shots: int | None = None
    memory: bool = False
    seeds: bool = False
    cancel: bool = False
    health: str = "ok"

    @property
    def healthy(self) -> bool:
        """The server says the backend can take tasks now."""
        return self.health == "ok"
