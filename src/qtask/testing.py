"""In-memory implementations of the ports, for fast unit tests only.

They follow the same rules as the real adapters (first result wins, leased claims, attempts
counted at claim) so that service and worker logic can be tested without I/O. They never stand
in for a real component in an integration or end-to-end test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from qtask.constants import LEASE_SECONDS
from qtask.domain.backends import BackendCapabilities, BackendKind, ExecutionBackend
from qtask.domain.lifecycle import attempts_after_release, attempts_after_start, startable
from qtask.domain.ports import (
    Completion,
    Delivery,
    EndListener,
    ListedTask,
    ListPosition,
    StreamState,
    TaskPage,
)
from qtask.domain.remote import RemoteBackend, RemoteJob, RemoteState, RemoteStatus
from qtask.domain.task import Status, Task, TaskOutcome
from qtask.errors import PendingCapError, RemoteUnavailableError, TaskNotFoundError


class InMemoryTaskStore:
    """TaskStore and TaskQueue in a dict; one instance plays both roles, as SQLite does."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self._leases: dict[str, float] = {}
        self._keys: dict[str, str] = {}
        self._wakeup = asyncio.Event()
        self._unpublished: dict[str, float] = {}
        self.dead: list[dict[str, object]] = []
        self.markers: dict[str, str] = {}
        # False: behave like SQLite (storing is publishing). True: like Redis beside NATS.
        self.tracks_publishing = False
        self._listeners: list[EndListener] = []
        self._resyncs: list[Callable[[], None]] = []
        self.per_shot: dict[str, list[str]] = {}

    def listen(self, ended: EndListener, resync: Callable[[], None]) -> None:
        """EndNotices: call `ended(ids)` when tasks end or are removed."""
        self._listeners.append(ended)
        self._resyncs.append(resync)

    def lose_notices(self) -> None:
        """Tests: act as a subscription that reconnected, asking listeners to re-read."""
        for resync in self._resyncs:
            resync()

    def _ended(self, task_ids: Sequence[str]) -> None:
        for listener in self._listeners:
            listener(task_ids)

    async def create(self, task: Task) -> Task:
        """Store a task, or return the one already stored under its idempotency key."""
        return (await self.create_many([task]))[0]

    async def create_many(self, tasks: Sequence[Task], *, max_pending: int = 0) -> list[Task]:
        """Store tasks; same idempotency rule as create, same cap rule as the port's."""
        if max_pending > 0:
            self._check_cap(tasks, max_pending)
        stored = []
        for task in tasks:
            key = task.idempotency_key
            if key is not None and key in self._keys:
                stored.append(self.tasks[self._keys[key]])
                continue
            self.tasks[task.id] = task
            if self.tracks_publishing:
                self._unpublished[task.id] = task.created_at
            if key is not None:
                self._keys[key] = task.id
            stored.append(task)
        self._wakeup.set()
        return stored

    def _check_cap(self, tasks: Sequence[Task], max_pending: int) -> None:
        """Raise PendingCapError when the new ones among `tasks` take an owner past the cap."""
        new: dict[str, int] = {}
        keys: set[str] = set()
        for task in tasks:
            key = task.idempotency_key
            if key is not None and (key in self._keys or key in keys):
                continue
            if key is not None:
                keys.add(key)
            if task.owner is not None and task.status is Status.QUEUED:
                new[task.owner] = new.get(task.owner, 0) + 1
        for owner, adding in new.items():
            pending = self._pending(owner)
            if pending + adding > max_pending:
                raise PendingCapError(owner, pending, max_pending)

    async def find_keyed(self, keys: Sequence[str]) -> dict[str, Task]:
        """The tasks stored under these idempotency keys, by key."""
        return {key: self.tasks[self._keys[key]] for key in keys if key in self._keys}

    async def get(self, task_id: str) -> Task | None:
        """Return the task or None."""
        return self.tasks.get(task_id)

    async def cancel(self, task_id: str, message: str) -> Task | None:
        """End a queued or running task in error (fail() without a dead letter); see the port."""
        try:
            return await self.fail(task_id, message)
        except TaskNotFoundError:
            return None

    async def active_counts(self) -> dict[str, int]:
        """How many tasks are queued and running."""
        statuses = [task.status for task in self.tasks.values()]
        return {"queued": statuses.count(Status.QUEUED), "running": statuses.count(Status.RUNNING)}

    async def outcomes(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        """Status, result and error of the tasks that exist among `task_ids`, by id."""
        return {
            task.id: TaskOutcome(
                task.id, task.status, task.result, task.error, task.owner, task.memory
            )
            for task_id in task_ids
            if (task := self.tasks.get(task_id)) is not None
        }

    async def memories(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """The per-shot results complete() kept, by id."""
        return {i: list(self.per_shot[i]) for i in task_ids if i in self.per_shot}

    async def pending_count(self, owner: str) -> int:
        """How many of `owner`'s tasks are queued or running."""
        return self._pending(owner)

    def _pending(self, owner: str) -> int:
        return sum(
            1 for task in self.tasks.values() if task.owner == owner and not task.status.terminal
        )

    async def expired(self, finished_before: float, limit: int) -> list[Task]:
        """Ended tasks that ended before `finished_before`, oldest first."""
        ended = [
            task
            for task in self.tasks.values()
            if task.status.terminal and (task.finished_at or 0.0) < finished_before
        ]
        return sorted(ended, key=lambda task: task.finished_at or 0.0)[:limit]

    async def remove(self, tasks: Sequence[Task]) -> int:
        """Delete these tasks if they ended, with their idempotency keys."""
        deleted = 0
        for task in tasks:
            stored = self.tasks.get(task.id)
            if stored is None or not stored.status.terminal:
                continue
            del self.tasks[task.id]
            self.per_shot.pop(task.id, None)
            if stored.idempotency_key is not None:
                self._keys.pop(stored.idempotency_key, None)
            deleted += 1
        if deleted:
            self._ended([task.id for task in tasks])
        return deleted

    async def page(
        self,
        owner: str | None,
        statuses: frozenset[Status] | None,
        after: ListPosition | None,
        limit: int,
    ) -> TaskPage:
        """Newest first, after `after`; see the port."""
        ordered = sorted(
            (
                task
                for task in self.tasks.values()
                if (owner is None or task.owner == owner)
                and (statuses is None or task.status in statuses)
                and (after is None or (task.created_at, task.id) < after)
            ),
            key=lambda task: (task.created_at, task.id),
            reverse=True,
        )
        listed = [
            ListedTask(
                TaskOutcome(task.id, task.status, task.result, task.error, task.owner),
                task.created_at,
            )
            for task in ordered[: max(limit, 0)]
        ]
        more = len(ordered) > limit and listed
        return TaskPage(listed, (listed[-1].created_at, listed[-1].outcome.id) if more else None)

    async def start(self, task_id: str, worker_id: str) -> Task | None:
        """Mark a task running and count its attempt, unless it already ended."""
        task = self.tasks.get(task_id)
        if task is None or not startable(task.status):
            return task
        started = replace(
            task,
            status=Status.RUNNING,
            attempts=attempts_after_start(task.attempts),
            started_at=time.time(),
        )
        self.tasks[task_id] = started
        return started

    async def mark_published(self, task_ids: Sequence[str]) -> None:
        """Forget these tasks as unpublished."""
        for task_id in task_ids:
            self._unpublished.pop(task_id, None)

    async def unpublished(self, older_than: float, limit: int) -> list[Task]:
        """Queued tasks never confirmed published, oldest first."""
        found = [
            self.tasks[task_id]
            for task_id, created in sorted(self._unpublished.items(), key=lambda kv: kv[1])
            if created < older_than and self.tasks[task_id].status is Status.QUEUED
        ]
        return found[:limit]

    async def active(self, after: str | None, limit: int) -> list[Task]:
        """Queued and running tasks with ids above `after`, in id order."""
        found = sorted(
            (task for task in self.tasks.values() if not task.status.terminal),
            key=lambda task: task.id,
        )
        return [task for task in found if after is None or task.id > after][: max(limit, 0)]

    async def index_active(self) -> int:
        """Nothing to add: active() reads every task."""
        return 0

    async def index_listing(self) -> int:
        """Nothing to add: page() reads every task."""
        return 0

    async def marker(self, name: str) -> str | None:
        """The record stored under `name`, or None."""
        return self.markers.get(name)

    async def swap_marker(self, name: str, expected: str | None, new: str) -> bool:
        """Compare-and-set of the record under `name`."""
        if self.markers.get(name) != expected:
            return False
        self.markers[name] = new
        return True

    async def dead_letters(self, limit: int) -> list[dict[str, object]]:
        """Newest first."""
        return list(reversed(self.dead))[:limit]

    async def complete(
        self,
        task_id: str,
        counts: dict[str, int],
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        memory: Sequence[str] | None = None,
    ) -> Completion:
        """Store a result unless the task already ended; say whether this call stored it."""
        before = self.tasks.get(task_id)
        task = self._finish(
            task_id,
            Status.COMPLETED,
            result=dict(counts),
            completed_by=worker_id,
            completed_attempt=attempt,
        )
        if task is not before and memory is not None:
            self.per_shot[task_id] = list(memory)
        return Completion(task, task is not before)

    async def fail(self, task_id: str, message: str, *, dead_letter: bool = False) -> Task:
        """End the task in error unless it already ended."""
        task = self._finish(task_id, Status.FAILED, error=message)
        if dead_letter:
            self.dead.append(
                {
                    "task_id": task_id,
                    "reason": message,
                    "attempts": task.attempts,
                    "at": time.time(),
                }
            )
        return task

    async def release(self, task_id: str, reason: str | None, *, penalize: bool) -> Task | None:
        """Requeue a running task."""
        task = self.tasks.get(task_id)
        if task is None or task.status is not Status.RUNNING:
            return None
        moved = task.moved(
            Status.QUEUED,
            last_error=reason if reason is not None else task.last_error,
            attempts=attempts_after_release(task.attempts, penalize=penalize),
        )
        self.tasks[task_id] = moved
        self._leases.pop(task_id, None)
        self._wakeup.set()
        return moved

    async def ping(self) -> None:
        """Always reachable."""

    async def close(self) -> None:
        """Nothing to release."""

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Wake a waiting fetch."""
        self._wakeup.set()

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        """Claim queued or lease-lapsed tasks in submission order."""
        deadline = time.monotonic() + timeout
        while True:
            self._wakeup.clear()
            now = time.time()
            claimed: list[Delivery] = []
            for task in list(self.tasks.values()):
                if len(claimed) == max_tasks:
                    break
                lapsed = task.status is Status.RUNNING and self._leases.get(task.id, 0) < now
                if task.status is Status.QUEUED or lapsed:
                    started = replace(
                        task,
                        status=Status.RUNNING,
                        attempts=attempts_after_start(task.attempts),
                        started_at=now,
                    )
                    self.tasks[task.id] = started
                    self._leases[task.id] = now + LEASE_SECONDS
                    claimed.append(InMemoryDelivery(self, started))
            if claimed:
                return claimed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return []

    def pin(self, task_id: str) -> None:
        """Take a running task out of the queue's reach (its remote job is the poller's)."""
        self._leases[task_id] = float("inf")

    def expire_lease(self, task_id: str) -> None:
        """Make a running task's lease lapse now, as if its worker had died."""
        self._leases[task_id] = 0.0

    def _finish(self, task_id: str, status: Status, **changes: object) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        if task.status.terminal:
            return task
        finished = task.moved(status, finished_at=time.time(), **changes)
        self.tasks[task_id] = finished
        self._leases.pop(task_id, None)
        self._unpublished.pop(task_id, None)  # an ended task is never published again
        self._ended([task_id])
        return finished


class InMemoryDelivery:
    """A claimed task; counts how it was settled, for assertions."""

    def __init__(self, store: InMemoryTaskStore, task: Task) -> None:
        self._store = store
        self._task = task
        self.acked = 0
        self.naked = 0

    @property
    def task(self) -> Task:
        """The task as claimed."""
        return self._task

    async def ack(self) -> None:
        """Record the ack."""
        self.acked += 1

    async def nak(self) -> None:
        """Record the nak."""
        self.naked += 1

    async def in_progress(self) -> None:
        """Renew the lease (not a pinned one: the poller holds that task)."""
        if self._store._leases.get(self._task.id) != float("inf"):
            self._store._leases[self._task.id] = time.time() + LEASE_SECONDS


class InMemoryStream:
    """A StreamQueue that only records what was published, with a stream that tests can lose
    (as NATS does when its storage goes) to check what the reconciler does about it."""

    def __init__(self) -> None:
        self.identity = uuid.uuid4().hex
        self.last_seq = 0
        self.published: list[str] = []  # task ids, in publish order, doubles included
        self.messages: set[str] = set()  # the ids the stream holds now
        self._callbacks: list[Callable[[], None]] = []

    async def stream_state(self) -> StreamState:
        """The current stream."""
        return StreamState(self.identity, self.last_seq)

    def on_stream_lost(self, callback: Callable[[], None]) -> None:
        """Remember the callback; `notice_loss()` calls it."""
        self._callbacks.append(callback)

    def lose(self, *, recreate: bool = True) -> None:
        """Lose every message: a new stream (another identity), or with `recreate=False` the
        same stream rewound to an older state (a restored backup)."""
        self.messages.clear()
        if recreate:
            self.identity = uuid.uuid4().hex
        self.last_seq = 0

    def notice_loss(self) -> None:
        """Act as the queue does when a publish or fetch finds the stream gone."""
        for callback in self._callbacks:
            callback()

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Record the ids; an id the stream holds already is dropped (the duplicate window)."""
        for task in tasks:
            self.published.append(task.id)
            if task.id not in self.messages:
                self.messages.add(task.id)
                self.last_seq += 1

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        """Hands out nothing: only publishing is recorded."""
        return []

    async def close(self) -> None:
        """Nothing to release."""


class InMemoryObjectStore:
    """ObjectStore in a dict."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes) -> None:
        """Store a copy."""
        self.objects[key] = bytes(data)

    async def get(self, key: str) -> bytes | None:
        """Return the blob or None."""
        return self.objects.get(key)

    async def delete(self, key: str) -> None:
        """Remove the blob if present."""
        self.objects.pop(key, None)

    async def ping(self) -> None:
        """Always reachable."""

    async def close(self) -> None:
        """Nothing to release."""


@dataclass
class FakeBackend:
    """An ExecutionBackend with the capabilities given and a health that tests can set."""

    capabilities: BackendCapabilities
    health_answer: str = "ok"

    async def health(self) -> str:
        """What `health_answer` says."""
        return self.health_answer


def fake_capabilities(name: str = "fake", **changes: object) -> BackendCapabilities:
    """Capabilities of a small local device for tests: 5 qubits, 1000 shots, unless changed."""
    fields: dict[str, object] = {
        "name": name,
        "type": "fake",
        "kind": BackendKind.LOCAL,
        "max_qubits": {"statevector": 5},
        "max_shots": 1000,
        "device_qubits": 5,
        "basis_gates": ("cz", "rz", "sx", "x"),
        "coupling_map": ((0, 1), (1, 2), (2, 3), (3, 4)),
        "noise": name,
        **changes,
    }
    return BackendCapabilities(**fields)  # type: ignore[arg-type]


class InMemoryRemoteJobs:
    """RemoteJobStore in a dict, pinning tasks in an InMemoryTaskStore as SQLite does."""

    def __init__(self, store: InMemoryTaskStore) -> None:
        self._store = store
        self.jobs: dict[str, RemoteJob] = {}

    async def record(self, job: RemoteJob) -> None:
        """Store the record; the task leaves the queue's reach."""
        self.jobs[job.task_id] = job
        self._store.pin(job.task_id)

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[RemoteJob]:
        """Due jobs, the earliest first, each pushed a lease ahead."""
        due = sorted(
            (job for job in self.jobs.values() if job.next_poll_at <= now),
            key=lambda job: job.next_poll_at,
        )[:limit]
        for job in due:
            self.jobs[job.task_id] = replace(job, next_poll_at=now + lease_s)
        return due

    async def reschedule(
        self, jobs: Sequence[RemoteJob], *, claimed_until: float | None = None
    ) -> None:
        """Store the new poll times (of jobs still claimed until `claimed_until`, if given)."""
        for job in jobs:
            stored = self.jobs.get(job.task_id)
            if stored is not None and claimed_until in (None, stored.next_poll_at):
                self.jobs[job.task_id] = job

    async def due_now(self, task_ids: Sequence[str], now: float) -> None:
        """Bring these jobs' next poll forward to `now`."""
        for task_id in task_ids:
            job = self.jobs.get(task_id)
            if job is not None and job.next_poll_at > now:
                self.jobs[task_id] = replace(job, next_poll_at=now)

    async def forget(self, task_ids: Sequence[str]) -> None:
        """Drop the records."""
        for task_id in task_ids:
            self.jobs.pop(task_id, None)


class FakeRemoteBackend:
    """A RemoteBackend whose jobs end when a test says so; it counts every call.

    Submissions are idempotent by task id, as a real provider's with a client token; `down`
    makes every call raise RemoteUnavailableError.
    """

    def __init__(
        self,
        name: str = "remote",
        *,
        status_batch: int = 256,
        poll_interval_s: float = 1.0,
        remote_timeout_s: float = 86400.0,
    ) -> None:
        self.capabilities = fake_capabilities(name, kind=BackendKind.REMOTE, type="fake_remote")
        self.poll_interval_s = poll_interval_s
        self.remote_timeout_s = remote_timeout_s
        self.status_batch = status_batch
        self.jobs: dict[str, RemoteStatus] = {}  # job id -> its state
        self.by_task: dict[str, str] = {}  # idempotency key -> job id
        self.submit_calls = 0
        self.status_calls = 0
        self.cancelled: list[str] = []
        self.down = False

    async def health(self) -> str:
        """ "ok", or that the provider is down."""
        return "the fake provider is down" if self.down else "ok"

    async def submit(self, task: Task) -> str:
        """A job for the task, the same one for a repeated submission."""
        self.submit_calls += 1
        self._check()
        if task.id not in self.by_task:
            job_id = f"job-{len(self.by_task)}"
            self.by_task[task.id] = job_id
            self.jobs[job_id] = RemoteStatus(RemoteState.QUEUED)
        return self.by_task[task.id]

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """The states tests set (refuses more ids than status_batch)."""
        self.status_calls += 1
        self._check()
        assert len(job_ids) <= self.status_batch, "more ids than one status call takes"
        return {job_id: self.jobs[job_id] for job_id in job_ids if job_id in self.jobs}

    async def cancel(self, job_id: str) -> None:
        """Record the cancellation; the job ends cancelled."""
        self._check()
        self.cancelled.append(job_id)
        self.jobs[job_id] = RemoteStatus(RemoteState.CANCELLED, message="cancelled")

    async def close(self) -> None:
        """Nothing to release."""

    def finish(self, job_id: str, counts: dict[str, int]) -> None:
        """End a job with these counts."""
        self.jobs[job_id] = RemoteStatus(RemoteState.DONE, counts=counts)

    def _check(self) -> None:
        if self.down:
            raise RemoteUnavailableError("the fake provider is down")


if TYPE_CHECKING:

    def _conforms(backend: FakeBackend) -> ExecutionBackend:
        return backend  # mypy checks that FakeBackend satisfies the port

    def _remote_conforms(backend: FakeRemoteBackend) -> RemoteBackend:
        return backend
