"""A mesh job's life (FR-009) and its fragments' attempts (FR-006): states and legal moves.

Pure: the runtime asks `advance` before every change and the store persists the result before
the runtime acts on it, so a coordinator killed at any point restarts from a state it wrote.

    QUEUED -> COMPILING -> RESERVING -> EXECUTING -> COMPLETED
                 |  ^          |  ^         |
                 |  '(restart) |  '---------'  (retry on another node; a restart re-runs)
                 '-------------+------------+--> FAILED

Fragment attempts: one row per (fragment, attempt): reserving -> reserved -> executing ->
completed | failed; `abandoned` when the coordinator died while the attempt was in flight.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from qtask.errors import InvalidTransitionError


class JobState(enum.StrEnum):
    """FR-009's job states."""

    QUEUED = "QUEUED"
    COMPILING = "COMPILING"
    RESERVING = "RESERVING"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended."""
        return self in (JobState.COMPLETED, JobState.FAILED)


_LEGAL: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.COMPILING, JobState.FAILED}),
    # COMPILING again: a coordinator restarted mid-compile compiles again.
    JobState.COMPILING: frozenset({JobState.COMPILING, JobState.RESERVING, JobState.FAILED}),
    # RESERVING again: the next node, or a wait for the next window.
    JobState.RESERVING: frozenset({JobState.RESERVING, JobState.EXECUTING, JobState.FAILED}),
    # back to RESERVING: a failed or interrupted run is retried (on another node if any).
    JobState.EXECUTING: frozenset({JobState.RESERVING, JobState.COMPLETED, JobState.FAILED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
}


def legal(current: JobState, new: JobState) -> bool:
    """Whether a job may move from `current` to `new`."""
    return new in _LEGAL[current]


class FragmentStatus(enum.StrEnum):
    """One attempt of one fragment on one node."""

    RESERVING = "reserving"
    RESERVED = "reserved"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    ABANDONED = "abandoned"  # in flight when the coordinator died; a new attempt follows

    @property
    def in_flight(self) -> bool:
        """Whether the attempt had not ended."""
        return self in (FragmentStatus.RESERVING, FragmentStatus.RESERVED, FragmentStatus.EXECUTING)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One attempt of a fragment: where it ran, when, and how it ended."""

    fragment_id: str
    attempt: int
    node_id: str
    status: FragmentStatus
    reservation_id: str | None = None
    start: float | None = None
    end: float | None = None
    error: str | None = None

    def body(self) -> dict[str, object]:
        """The fragment as GET /api/v1/jobs/{id} shows it."""
        return {
            "fragment_id": self.fragment_id,
            "attempt": self.attempt,
            "node": self.node_id,
            "status": self.status.value,
            "reservation_id": self.reservation_id,
            "start": self.start,
            "end": self.end,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """A submitted circuit and how far it got."""

    id: str
    state: JobState
    qasm: str
    shots: int
    seed: int | None
    min_fidelity: float
    created_at: float
    updated_at: float
    owner: str | None = None
    idempotency_key: str | None = None
    counts: dict[str, int] | None = None
    error: str | None = None
    fragments: tuple[Fragment, ...] = field(default=())
    # Mesh part 2 (FR-006): route, transfers and time per stage, once the job has ended.
    metadata: dict[str, object] | None = None

    def advance(self, new: JobState, now: float, **changes: object) -> Job:
        """This job in state `new` (with `changes`); InvalidTransitionError if not legal."""
        if not legal(self.state, new):
            raise InvalidTransitionError(f"job {self.id}: {self.state} -> {new} is not allowed")
        return replace(self, state=new, updated_at=now, **changes)  # type: ignore[arg-type]

    def body(self) -> dict[str, object]:
        """The job as GET /api/v1/jobs/{id} shows it."""
        body: dict[str, object] = {
            "job_id": self.id,
            "state": self.state.value,
            "shots": self.shots,
            "seed": self.seed,
            "min_fidelity": self.min_fidelity,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "fragments": [fragment.body() for fragment in self.fragments],
        }
        if self.state is JobState.COMPLETED:
            body["counts"] = self.counts
        if self.state is JobState.FAILED:
            body["error"] = self.error
        if self.metadata is not None:
            body["metadata"] = self.metadata
        return body
