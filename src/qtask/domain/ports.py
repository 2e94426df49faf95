"""The ports: what the service needs from storage, dispatch and object storage.

Embedded mode implements them on SQLite and a local directory; distributed mode (later) on Redis,
NATS JetStream and S3. `qtask.testing` has in-memory versions for unit tests. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from qtask.domain.task import Status, Task, TaskOutcome


@dataclass(frozen=True, slots=True)
class Completion:
    """What TaskStore.complete did: the task as stored, and whether this very call completed it.

    Of all the calls that complete one task (a run and its duplicates), exactly one reports
    `transitioned`; the others find the task already ended and change nothing.
    """

    task: Task
    transitioned: bool


@dataclass(frozen=True, slots=True)
class ListedTask:
    """One task of a listing: what a client reads of it, and when it was submitted."""

    outcome: TaskOutcome
    created_at: float


# A position in a listing (newest first): a task's created_at and id, the id breaking ties.
ListPosition = tuple[float, str]


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a listing, and where the next one starts (None: there is no more).

    A page may hold fewer tasks than asked while `next` is set: a store that filters by status
    as it reads stops after a bounded amount of reading, so one request's cost stays bounded.
    """

    tasks: list[ListedTask]
    next: ListPosition | None


EndListener = Callable[[Sequence[str]], None]


class EndNotices(Protocol):
    """How a process learns that tasks ended (completed, failed, cancelled or were removed),
    whichever process ended them; long polls wait on it instead of reading the store again."""

    def listen(self, ended: EndListener, resync: Callable[[], None]) -> None:
        """Call `ended(ids)` on the event loop after tasks ended; `resync()` when notices may
        have been missed (a subscription that reconnected), so that waiters re-read."""
        ...


class TaskStore(Protocol):
    """Durable task records. Every write is committed before its coroutine returns."""

    async def create(self, task: Task) -> Task:
        """Store a new queued task, or return the existing one with the same idempotency key."""
        ...

    async def create_many(self, tasks: Sequence[Task], *, max_pending: int = 0) -> list[Task]:
        """Store several new tasks in one commit; same idempotency rule as create.

        With `max_pending` > 0, raise PendingCapError and store nothing when the new tasks
        (those not found under their idempotency key) would take their owner past that many
        queued or running tasks; checked and stored in one atomic step. Tasks without an owner
        are not capped.
        """
        ...

    async def find_keyed(self, keys: Sequence[str]) -> dict[str, Task]:
        """The tasks stored under these idempotency keys, by key (keys with none left out)."""
        ...

    async def get(self, task_id: str) -> Task | None:
        """Return the task, or None when there is no such task."""
        ...

    async def cancel(self, task_id: str, message: str) -> Task | None:
        """End a queued or running task in error with `message`.

        Returns the task as stored: failed with `message` when it was queued or running,
        unchanged when it had ended; None when there is no such task. A queued task's message
        may still be in the queue; the worker that receives it finds it ended and drops it. A
        running task's worker finds its result refused (the first outcome wins) and drops it.
        """
        ...

    async def active_counts(self) -> dict[str, int]:
        """How many tasks are queued and running (keys "queued", "running"); cheap to call."""
        ...

    async def outcomes(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        """Status, result, error and owner of the tasks that exist among `task_ids`, in one
        round trip."""
        ...

    async def memories(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """The per-shot results complete() kept for those of `task_ids` that have them."""
        ...

    async def page(
        self,
        owner: str | None,
        statuses: frozenset[Status] | None,
        after: ListPosition | None,
        limit: int,
    ) -> TaskPage:
        """At most `limit` tasks, newest first (created_at, then id, descending), after position
        `after` (from the newest when None); only `owner`'s (None: every task's) and only those
        in `statuses` (None: any). Tasks added meanwhile never shift the pages after `after`."""
        ...

    async def pending_count(self, owner: str) -> int:
        """How many of `owner`'s tasks are queued or running; cheap to call."""
        ...

    async def expired(self, finished_before: float, limit: int) -> list[Task]:
        """At most `limit` ended tasks that ended before `finished_before` (epoch seconds),
        the oldest first."""
        ...

    async def remove(self, tasks: Sequence[Task]) -> int:
        """Delete these tasks and their idempotency keys; a task not ended is kept. Returns how
        many were deleted."""
        ...

    async def start(self, task_id: str, worker_id: str) -> Task | None:
        """Mark a delivered task running and count its attempt on top of the stored ones
        (domain.lifecycle.attempts_after_start), atomically; return it as stored.

        Returns the task unchanged when it already ended (the caller acknowledges it without
        running it again) and None when there is no such task.
        """
        ...

    async def mark_published(self, task_ids: Sequence[str]) -> None:
        """Record that these tasks reached the queue, so the reconciler leaves them alone."""
        ...

    async def unpublished(self, older_than: float, limit: int) -> list[Task]:
        """Queued tasks created before `older_than` (epoch seconds) never confirmed published."""
        ...

    async def active(self, after: str | None, limit: int) -> list[Task]:
        """At most `limit` queued or running tasks with ids above `after` (from the first when
        None), in id order: a cursor that stays valid while tasks are added and end."""
        ...

    async def index_active(self) -> int:
        """Bring the listing of queued and running tasks up to date with tasks an older qtask
        stored; idempotent and cheap once done. Returns how many tasks it added."""
        ...

    async def index_listing(self) -> int:
        """Bring the listings (page()) up to date with tasks an older qtask stored; idempotent
        and cheap once done. Returns how many tasks it added."""
        ...

    async def marker(self, name: str) -> str | None:
        """The small record stored under `name` (see swap_marker), None when there is none."""
        ...

    async def swap_marker(self, name: str, expected: str | None, new: str) -> bool:
        """Store `new` under `name` if the record is still `expected` (None: absent); return
        whether it was stored. Every process sees the same records (compare-and-set)."""
        ...

    async def complete(
        self,
        task_id: str,
        counts: dict[str, int],
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        memory: Sequence[str] | None = None,
    ) -> Completion:
        """Record a result. The first result wins: a late duplicate changes nothing.

        `memory`: the per-shot results, kept with the counts (atomically) when they are not in
        an object store; read back with memories().

        The call that makes the transition also records `worker_id` and `attempt` on the task
        (`completed_by`, `completed_attempt`) and reports `transitioned`, atomically with the
        change; raises TaskNotFoundError when there is no such task.
        """
        ...

    async def fail(self, task_id: str, message: str, *, dead_letter: bool = False) -> Task:
        """End the task in error with a message a user can act on (no-op once terminal).

        `dead_letter` also files the task in the dead-letter record the operator inspects
        (tasks whose deliveries or attempts were used up).
        """
        ...

    async def dead_letters(self, limit: int) -> list[dict[str, object]]:
        """The most recent dead-letter records, newest first."""
        ...

    async def release(self, task_id: str, reason: str | None, *, penalize: bool) -> Task | None:
        """Put a running task back in the queue (a retry); `penalize=False` refunds the attempt
        (domain.lifecycle.attempts_after_release)."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the store can be read and written."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


class Delivery(Protocol):
    """One task handed to a worker; the worker must settle it with exactly one of ack or nak."""

    @property
    def task(self) -> Task:
        """The task as it was when it was handed out (status running, attempts counted)."""
        ...

    async def ack(self) -> None:
        """Say the task is settled (its outcome is stored); it must not be delivered again."""
        ...

    async def nak(self) -> None:
        """Say the task was put back (released in the store) and may be delivered again."""
        ...

    async def in_progress(self) -> None:
        """Say the task is still being worked on, so it is not handed to another worker."""
        ...


class TaskQueue(Protocol):
    """Dispatch of task ids to workers, at least once."""

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Make stored queued tasks available to workers."""
        ...

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        """Wait up to `timeout` seconds for tasks and return at most `max_tasks` of them."""
        ...

    async def close(self) -> None:
        """Stop handing out tasks."""
        ...


@dataclass(frozen=True, slots=True)
class StreamState:
    """Which stream holds a queue's messages, and the highest sequence number it has used."""

    # Changes when the stream is created anew (JetStream: its creation time), so a stream that
    # was deleted, or lost with its server's storage, and made again is told apart.
    identity: str
    last_seq: int


class StreamQueue(TaskQueue, Protocol):
    """A TaskQueue whose messages live in a stream that can be lost apart from the task store."""

    async def stream_state(self) -> StreamState:
        """The stream as it is now, created first when it is missing."""
        ...

    def on_stream_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the queue itself finds its stream or consumer gone."""
        ...


class RateLimiter(Protocol):
    """Token buckets by name (an API key's): how often each may call."""

    async def take(self, name: str) -> float:
        """Spend one token of `name`: 0.0 when there was one, else the seconds until one."""
        ...


class ObjectStore(Protocol):
    """Blobs under string keys: circuits and results for long-term keeping (the 002 seed)."""

    async def put(self, key: str, data: bytes) -> None:
        """Store `data` durably under `key`, replacing what was there."""
        ...

    async def get(self, key: str) -> bytes | None:
        """Return the blob, or None when there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob if it exists."""
        ...

    async def ping(self) -> None:
        """Raise ObjectStoreUnavailableError unless the store answers."""
        ...

    async def close(self) -> None:
        """Release the client."""
        ...
