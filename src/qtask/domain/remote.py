"""Remote backends: the port a provider implements, its job states, and the poll schedule.

A remote task is claimed by a worker like any task; the worker submits it to the provider (the
task id as the idempotency key) and stores a `RemoteJob` for it before it acknowledges the
delivery. The task stays `running` (clients read `pending`) until the poller finds the job ended
and completes or fails it. Pure data and rules: no I/O.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from qtask.domain.backends import ExecutionBackend

# The job record's key is part of the bucket layout (domain.object_keys); re-exported here.
from qtask.domain.object_keys import remote_job_key as remote_job_key
from qtask.domain.task import Task


class RemoteState(enum.StrEnum):
    """A provider job's state, in qtask's words (PROVIDER_STATES maps each provider's)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """True once the job can never change again."""
        return self in (RemoteState.DONE, RemoteState.ERROR, RemoteState.CANCELLED)


# Every provider's job states and what they mean here, in one place. `qtask` is another qtask
# deployment (its task bodies say pending/completed/error; `pending` covers queued and running);
# `ibm` are RuntimeJobV2.status() strings; `braket` AwsQuantumTask states (CREATED is missing
# from qiskit-braket-provider's own map: a just-created task is queued here).
PROVIDER_STATES: Mapping[str, Mapping[str, RemoteState]] = {
    "qtask": {
        "pending": RemoteState.RUNNING,
        "completed": RemoteState.DONE,
        "error": RemoteState.ERROR,
    },
    "ibm": {
        "INITIALIZING": RemoteState.QUEUED,
        "QUEUED": RemoteState.QUEUED,
        "RUNNING": RemoteState.RUNNING,
        "DONE": RemoteState.DONE,
        "ERROR": RemoteState.ERROR,
        "CANCELLED": RemoteState.CANCELLED,
    },
    # FR-009's job states of a `qtask coordinator` (qtask.mesh.jobs.JobState).
    "mesh": {
        "QUEUED": RemoteState.QUEUED,
        "COMPILING": RemoteState.QUEUED,
        "RESERVING": RemoteState.QUEUED,
        "EXECUTING": RemoteState.RUNNING,
        "COMPLETED": RemoteState.DONE,
        "FAILED": RemoteState.ERROR,
    },
    "braket": {
        "CREATED": RemoteState.QUEUED,
        "QUEUED": RemoteState.QUEUED,
        "RUNNING": RemoteState.RUNNING,
        "COMPLETED": RemoteState.DONE,
        "FAILED": RemoteState.ERROR,
        "CANCELLING": RemoteState.RUNNING,
        "CANCELLED": RemoteState.CANCELLED,
    },
}


def provider_state(provider: str, state: str) -> RemoteState:
    """qtask's state for a provider's state string; an unknown one reads as still running (the
    job is polled again and, at worst, times out) rather than ending the task on a guess."""
    return PROVIDER_STATES[provider].get(state, RemoteState.RUNNING)


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """One job as the provider reports it: its state and, once ended, its outcome."""

    state: RemoteState
    counts: dict[str, int] | None = None
    memory: list[str] | None = None
    # The provider's own words for an error (or a cancellation).
    message: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """The durable record of a submitted remote task: which provider job to poll, and when."""

    task_id: str
    backend: str
    job_id: str
    submitted_at: float
    # Epoch seconds of the next status call; claims push it on by a lease.
    next_poll_at: float
    # Status calls that found the job unfinished (drives the backoff).
    polls: int = 0


class RemoteBackend(ExecutionBackend, Protocol):
    """A backend whose circuits run at a provider: submit, poll in batches, cancel."""

    @property
    def poll_interval_s(self) -> float:
        """Seconds between the first status calls of a job (backoff grows from here)."""
        ...

    @property
    def remote_timeout_s(self) -> float:
        """How long a job may stay unfinished before it is cancelled and the task fails."""
        ...

    @property
    def status_batch(self) -> int:
        """How many jobs one statuses() call may name (1: the provider has no batch call)."""
        ...

    async def submit(self, task: Task) -> str:
        """Submit the task's circuit; return the provider's job id. The task id is the
        idempotency key: submitting the same task again returns the same job."""
        ...

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """Each job's state (at most status_batch of them); a job the provider does not
        answer for is left out."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Ask the provider to cancel the job (best effort)."""
        ...

    async def close(self) -> None:
        """Release the provider's client."""
        ...


class RemoteJobStore(Protocol):
    """Durable RemoteJob records and the atomic claim of those due for a poll."""

    async def record(self, job: RemoteJob) -> None:
        """Store (or replace) the task's job record, durably, and keep the task `running` but
        out of the queue's reach (it is the poller's now)."""
        ...

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[RemoteJob]:
        """At most `limit` jobs due at `now`, each pushed `lease_s` into the future in the same
        atomic step, so two pollers never claim one job and a crashed pass's jobs come due
        again after the lease."""
        ...

    async def reschedule(
        self, jobs: Sequence[RemoteJob], *, claimed_until: float | None = None
    ) -> None:
        """Store these records' new next_poll_at and polls. With `claimed_until` (the time a
        claim pushed them to), only jobs still claimed so are changed: one made due meanwhile
        (due_now, after a cancel) or claimed again after the lease lapsed is left alone."""
        ...

    async def forget(self, task_ids: Sequence[str]) -> None:
        """Remove the records of tasks that ended."""
        ...

    async def due_now(self, task_ids: Sequence[str], now: float) -> None:
        """Make the jobs of these tasks (those that have one) due for a poll at `now`: a task
        cancelled here gets its provider job cancelled by the next poller pass, not when its
        backoff would have polled it (up to MAX_POLL_INTERVAL_S later)."""
        ...


# Backoff never waits longer than this between two status calls of one job: a provider queue
# may take hours, but a result should not sit there for more than a few minutes unread.
MAX_POLL_INTERVAL_S = 300.0


def next_poll_delay(interval: float, polls: int, rng: random.Random | None = None) -> float:
    """Seconds until a still-unfinished job is polled again: `interval` doubled per poll, capped
    at MAX_POLL_INTERVAL_S, with +-25 % jitter so jobs submitted together spread out."""
    base = min(interval * 2.0 ** min(polls, 30), max(interval, MAX_POLL_INTERVAL_S))
    return base * (0.75 + 0.5 * (rng or random).random())


def job_document(job: RemoteJob) -> dict[str, object]:
    """The pending job record as JSON-ready data."""
    return {
        "task_id": job.task_id,
        "backend": job.backend,
        "job_id": job.job_id,
        "submitted_at": job.submitted_at,
    }
