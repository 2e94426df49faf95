"""The task service: the use cases behind the API, independent of HTTP and of the adapters."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import orjson

from qtask import metrics
from qtask.application.listing import LIST_STATUSES, Listing, decode_cursor, encode_cursor
from qtask.application.waiters import BatchedReads, Waiters
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings
from qtask.constants import (
    FAULT_EXIT_AFTER_STORE_ENV,
    LIST_LIMIT_MAX,
    MAX_IDS_PER_READ,
    MAX_WAIT_SECONDS,
    MSG_CANCELLED,
)
from qtask.domain.backends import Backends
from qtask.domain.object_keys import circuit_key, result_key, result_keys
from qtask.domain.ports import ObjectStore, TaskQueue, TaskStore
from qtask.domain.remote import RemoteJobStore
from qtask.domain.task import CircuitInfo, Status, Task, TaskOutcome, new_task_id
from qtask.errors import (
    CircuitTooLargeError,
    InvalidRequestError,
    PayloadTooLargeError,
    PendingCapError,
    QTaskError,
    QueueUnavailableError,
    TaskConflictError,
    TaskNotFoundError,
)
from qtask.logs import get_logger

log = get_logger("service")

# A batch parses inline circuits back to back; yield to the event loop this often.
_YIELD_EVERY = 64
# Object-store writes one batch keeps in flight.
_OBJECT_PUTS_AT_ONCE = 32
# The namespace of idempotency keys sent while API keys are off. API key names match
# ^[A-Za-z0-9_.@-]{1,64}$ (config.ApiKey), so no key's namespace "{owner}:" is "*:": turning
# keys on or off never makes a key sent one way meet a key sent the other way.
_ANONYMOUS_SCOPE = "*"


def _scoped(idempotency_key: str | None, owner: str | None) -> str | None:
    """The idempotency key as stored: each API key has its own namespace of them, and callers
    without a key (keys off) share one more, so an Idempotency-Key never returns a task of
    another namespace."""
    if idempotency_key is None:
        return None
    return f"{_ANONYMOUS_SCOPE if owner is None else owner}:{idempotency_key}"


def _owned(tasks: list[Task], owner: str | None) -> list[Task]:
    """`tasks`, found under the caller's idempotency keys, unless one belongs to another
    namespace. Only a key an older qtask stored unscoped (keys off then) can, "alice:k" meeting
    alice's "k"; the caller could never read that task, so the request is refused (409)."""
    if any(task.owner != owner for task in tasks):
        raise TaskConflictError(
            "This Idempotency-Key was used, before API keys were turned on, by a task that "
            "belongs to no key; send another Idempotency-Key."
        )
    return tasks


@dataclass(frozen=True, slots=True)
class Submission:
    """One circuit as a client submitted it, after the request's shape was checked."""

    source: str
    shots: int
    seed: int | None = None
    # Return each shot's bitstring too (bounded by limits.max_memory_bits).
    memory: bool = False
    # The configured backend to run on; None: the default backend.
    backend: str | None = None


class TaskService:
    """Submit circuits and read tasks; the only thing the API's routes call."""

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        ingestor: CircuitIngestor,
        limits: LimitsSettings,
        objects: ObjectStore | None = None,
        *,
        max_pending_per_owner: int = 0,
        waiters: Waiters | None = None,
        backends: Backends,
        remote_jobs: RemoteJobStore | None = None,
    ) -> None:
        """`max_pending_per_owner`: tasks one API key may have queued or running (0: no cap).
        `waiters`: the registry that the process's end notices wake (long polls); without
        one, a wait lasts until its deadline unless the task has already ended.
        `backends`: the configured backends (injected: the service knows none by itself).
        `remote_jobs`: the remote job records, when remote backends are configured: a cancel
        makes its job due now, so the poller cancels it at the provider at once."""
        self._remote_jobs = remote_jobs
        self._waiters = Waiters() if waiters is None else waiters
        self._reads = BatchedReads(store.outcomes)
        self._store = store
        self._queue = queue
        self._objects = objects
        self._ingestor = ingestor
        self._max_shots = limits.max_shots
        self._max_memory_bits = limits.max_memory_bits
        self._max_batch = limits.max_batch_tasks
        self._max_pending = max_pending_per_owner
        self._backends = backends

    async def submit(
        self,
        submission: Submission,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> Task:
        """Validate and durably store a task, then hand it to the workers.

        `owner` is the calling API key's name (None when keys are off): the task is visible
        to that key only, and counts against its cap of pending tasks. A retry whose
        Idempotency-Key was accepted gets its task, unparsed and whatever the cap.
        """
        key = _scoped(idempotency_key, owner)
        keys = None if key is None else [key]
        if (retried := await self._retried(keys, owner, 1)) is not None:
            return retried[0]
        task = await self._prepare(submission, key, owner)
        return (await self._store_and_publish([task], owner))[0]

    async def submit_many(
        self,
        submissions: Sequence[Submission],
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> list[Task]:
        """Validate every circuit first, then store them all in one commit, or none.

        An invalid circuit fails the whole batch with its error, prefixed by `tasks[i]: `.
        With `idempotency_key`, circuit i is stored under `{key}/{i}`, so a retried batch
        returns the tasks the first attempt stored.
        """
        if not submissions:
            raise InvalidRequestError("A batch needs at least one task.")
        if len(submissions) > self._max_batch:
            raise PayloadTooLargeError(
                f"A batch may hold at most {self._max_batch} tasks; got {len(submissions)}."
            )
        scoped = _scoped(idempotency_key, owner)
        keys = None if scoped is None else [f"{scoped}/{i}" for i in range(len(submissions))]
        if (retried := await self._retried(keys, owner, len(submissions))) is not None:
            return retried
        tasks = []
        for index, submission in enumerate(submissions):
            key = None if keys is None else keys[index]
            try:
                tasks.append(await self._parse(submission, key, owner))
            except InvalidRequestError as exc:
                raise type(exc)(f"tasks[{index}]: {exc}") from None
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # inline parses are synchronous: let others run
        tasks = await self._put_circuits(tasks, [s.source for s in submissions])
        return await self._store_and_publish(tasks, owner)

    async def get(self, task_id: str) -> Task:
        """Return the task or raise TaskNotFoundError."""
        task = await self._store.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        return task

    async def read(self, task_id: str, caller: str | None = None) -> TaskOutcome:
        """What `caller` may see of the task; TaskNotFoundError when there is none, or when it
        belongs to another key (the same answer, so ids of others' tasks cannot be probed)."""
        found = (await self._store.outcomes([task_id])).get(task_id)
        if found is None or not found.visible_to(caller):
            raise TaskNotFoundError(task_id)
        return (await self._with_memory({task_id: found}))[task_id]

    async def cancel(self, task_id: str, caller: str | None = None) -> TaskOutcome:
        """Cancel a queued or running task: it ends in error "Task was cancelled." at once.

        A queued task never runs. A running one that runs alone in its worker process is
        stopped within about a second (the worker looks it up while it runs); one sharing an
        Aer call with other tasks runs on, and its result is discarded when it arrives.
        Cancelling a cancelled task answers the same again; a task that ended otherwise raises
        TaskConflictError. With a cap on pending tasks, a running task is not cancelled either
        (TaskConflictError): its run would go on while no longer counted against the cap.
        """
        if caller is not None:
            seen = await self.read(task_id, caller)  # the owner never changes: check it first
            if self._max_pending > 0 and seen.status is Status.RUNNING:
                raise TaskConflictError(
                    "The task is running, and with a cap on pending tasks a running task "
                    "cannot be cancelled: its run would go on outside the cap."
                )
        task = await self._store.cancel(task_id, MSG_CANCELLED)
        if task is None:
            raise TaskNotFoundError(task_id)
        if task.status is Status.FAILED and task.error == MSG_CANCELLED:
            log.info("task_cancelled", task_id=task_id)
            metrics.TASKS_CANCELLED.inc()
            await self._cancel_remote(task)
            return TaskOutcome(task.id, task.status, task.result, task.error, task.owner)
        raise TaskConflictError(f"The task already ended ({task.status.value}).")

    async def _cancel_remote(self, task: Task) -> None:
        """Bring a cancelled remote task's job due now: the next poller pass (within its tick)
        finds the task ended and cancels the job at the provider. Best effort: without it the
        job's next scheduled poll does the same."""
        if self._remote_jobs is None or task.started_at is None:
            return  # never started: no provider job
        try:
            await self._remote_jobs.due_now([task.id], time.time())
        except QTaskError as exc:
            log.warning("remote_cancel_not_scheduled", task_id=task.id, reason=str(exc))

    async def active_counts(self) -> dict[str, int]:
        """How many tasks are queued and running."""
        return await self._store.active_counts()

    async def read_many(
        self, task_ids: Sequence[str], caller: str | None = None
    ) -> dict[str, TaskOutcome]:
        """What `caller` may see of the tasks among `task_ids` (others left out)."""
        _check_ids(task_ids)
        found = await self._store.outcomes(task_ids)
        if caller is not None:
            found = {task_id: task for task_id, task in found.items() if task.visible_to(caller)}
        return await self._with_memory(found)

    async def wait(self, task_id: str, caller: str | None, wait_s: float) -> TaskOutcome:
        """As read(), but while the task is queued or running wait up to `wait_s` seconds for
        it to end; then answer what it is (still pending at the deadline)."""
        _check_wait(wait_s)
        found = (await self._wait_for([task_id], caller, wait_s)).get(task_id)
        if found is None:  # unknown, another key's, or removed while waited for
            raise TaskNotFoundError(task_id)
        return (await self._with_memory({task_id: found}))[task_id]

    async def wait_many(
        self, task_ids: Sequence[str], caller: str | None, wait_s: float
    ) -> dict[str, TaskOutcome]:
        """As read_many(), but wait up to `wait_s` seconds for all of the tasks to end."""
        _check_wait(wait_s)
        _check_ids(task_ids)
        return await self._with_memory(await self._wait_for(task_ids, caller, wait_s))

    async def _with_memory(self, found: dict[str, TaskOutcome]) -> dict[str, TaskOutcome]:
        """`found`, with the per-shot results of the completed tasks that asked for them: from
        the record, else from the result object (where workers put them when there is one)."""
        wanted = [i for i, task in found.items() if task.memory and task.status is Status.COMPLETED]
        if not wanted:
            return found
        shots = await self._store.memories(wanted)
        missing = [i for i in wanted if i not in shots]
        if missing and self._objects is not None:
            documents = await asyncio.gather(*(self._result_document(i) for i in missing))
            for task_id, document in zip(missing, documents, strict=True):
                per_shot = None if document is None else orjson.loads(document).get("memory")
                if per_shot is not None:
                    shots[task_id] = per_shot
        return {
            i: replace(task, per_shot=shots[i]) if i in shots else task for i, task in found.items()
        }

    async def _result_document(self, task_id: str) -> bytes | None:
        """The task's result object, under the completed area or where a version before the
        areas wrote it (domain.object_keys)."""
        assert self._objects is not None
        for key in result_keys(task_id):
            document = await self._objects.get(key)
            if document is not None:
                return document
        return None

    async def _wait_for(
        self, task_ids: Sequence[str], caller: str | None, wait_s: float
    ) -> dict[str, TaskOutcome]:
        """Read until none of the tasks `caller` may see is pending, or until the deadline.

        The watch is registered before the first read, so an end recorded after that read
        always wakes it; a wake-up names the tasks to read again. A task missing or not visible
        counts as done (it cannot end), so its id never holds the answer back.
        """

        async def read(ids: Collection[str]) -> dict[str, TaskOutcome]:
            found = await self._reads.read(list(ids))
            return {i: task for i, task in found.items() if task.visible_to(caller)}

        def reread(ids: Collection[str], fresh: Mapping[str, TaskOutcome]) -> None:
            """Take in what was read again: drop those gone, stop watching those ended."""
            settled = [i for i in ids if i not in fresh or fresh[i].status.terminal]
            for task_id in ids:
                if task_id in fresh:
                    found[task_id] = fresh[task_id]
                else:  # removed, as a first read would leave it out
                    found.pop(task_id, None)
            pending.difference_update(settled)
            self._waiters.forget(watch, settled)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        with self._waiters.watch(task_ids) as watch, metrics.LONG_POLLS.track_inprogress():
            found = await read(task_ids)
            pending = {i for i, task in found.items() if not task.status.terminal}
            self._waiters.forget(watch, set(task_ids) - pending)
            # Each wake-up costs what it names: only the tasks said to have ended are read
            # again (all the pending ones after a resync), so a batch of n tasks ending one
            # notice at a time costs about 2n reads of one task, not n * n / 2.
            while pending:
                try:
                    async with asyncio.timeout_at(deadline):
                        ended = await watch.wait()
                except TimeoutError:
                    again = set(pending)
                    reread(again, await read(again))
                    break
                again = set(pending) if ended is None else pending & ended
                if again:
                    reread(again, await read(again))
            return found

    async def list_tasks(
        self,
        caller: str | None,
        statuses: Sequence[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Listing:
        """The caller's tasks (every task when API keys are off), newest first.

        `statuses`: the API's names (pending, completed, error), any of them when None.
        `cursor`: next_cursor of the page before; pages stay stable while tasks are added.
        """
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidRequestError(f"limit must be between 1 and {LIST_LIMIT_MAX}; got {limit}.")
        wanted: frozenset[Status] | None = None
        if statuses:
            unknown = sorted(set(statuses) - LIST_STATUSES.keys())
            if unknown:
                raise InvalidRequestError(
                    f"Unknown status {', '.join(unknown)}; use pending, completed or error."
                )
            wanted = frozenset().union(*(LIST_STATUSES[name] for name in statuses))
        after = None if cursor is None else decode_cursor(cursor)
        page = await self._store.page(caller, wanted, after, limit)
        return Listing(page.tasks, None if page.next is None else encode_cursor(page.next))

    def backends(self) -> Backends:
        """The backends tasks may name."""
        return self._backends

    async def circuit(self, task_id: str, caller: str | None = None) -> str:
        """The OpenQASM text the task was submitted with; TaskNotFoundError as read() gives it."""
        task = await self._store.get(task_id)
        if task is None or (caller is not None and task.owner != caller):
            raise TaskNotFoundError(task_id)
        return task.source

    async def _retried(
        self, keys: list[str] | None, owner: str | None, adding: int
    ) -> list[Task] | None:
        """The tasks a retry's idempotency keys name, when all of them are stored; else None.

        Before parsing, an owner over its cap is refused at once (unless the request is such a
        retry): a hint read outside the store's atomic check, which decides in the end.
        """
        if (stored := await self._stored_under(keys, owner)) is not None:
            return stored
        if owner is None or self._max_pending <= 0:
            return None
        pending = await self._store.pending_count(owner)
        if pending + adding <= self._max_pending:
            return None
        # The original may have been stored between the two reads: look once more.
        if (stored := await self._stored_under(keys, owner)) is not None:
            return stored
        metrics.REQUESTS_REFUSED.labels("pending").inc()
        raise PendingCapError(owner, pending, self._max_pending)

    async def _stored_under(self, keys: list[str] | None, owner: str | None) -> list[Task] | None:
        """The tasks stored under all of `keys`, in their order; None when any is missing."""
        if keys is None:
            return None
        found = await self._store.find_keyed(keys)
        if len(found) < len(keys):
            return None
        return _owned([found[key] for key in keys], owner)

    async def _store_and_publish(self, tasks: list[Task], owner: str | None) -> list[Task]:
        """Store the tasks in one commit and publish the new ones; a task whose idempotency key
        was already used comes back as the task stored then, and is not published again."""
        try:
            stored = await self._store.create_many(tasks, max_pending=self._max_pending)
        except PendingCapError:
            metrics.REQUESTS_REFUSED.labels("pending").inc()
            raise
        new = [kept for kept, task in zip(stored, tasks, strict=True) if kept.id == task.id]
        if new:
            metrics.TASKS_SUBMITTED.inc(len(new))
            await self._publish(new)
        return _owned(stored, owner)

    async def _publish(self, tasks: list[Task]) -> None:
        if os.environ.get(FAULT_EXIT_AFTER_STORE_ENV):  # chaos tests: die in the gap
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            await self._queue.publish(tasks)
        except QueueUnavailableError as exc:
            # The tasks are durably stored and listed as unpublished: the reconciler publishes
            # them once the queue is back. Accepting them now is safe.
            log.warning("publish_deferred", tasks=len(tasks), reason=str(exc))

    async def _prepare(self, submission: Submission, key: str | None, owner: str | None) -> Task:
        task = await self._parse(submission, key, owner)
        return (await self._put_circuits([task], [submission.source]))[0]

    async def _parse(self, submission: Submission, key: str | None, owner: str | None) -> Task:
        # An unknown backend, or a seed it would ignore, is refused before parsing.
        self._backends.get(submission.backend).capabilities.check_seed(submission.seed)
        if not 1 <= submission.shots <= self._max_shots:
            raise InvalidRequestError(
                f"shots must be between 1 and {self._max_shots}; got {submission.shots}."
            )
        circuit = await self._ingestor.ingest(submission.source)
        backend = self._backends.admit(submission.backend, circuit.info, submission.shots)
        if submission.memory:
            self._check_memory(submission.shots, circuit.info)
        return Task(
            id=new_task_id(),
            source=submission.source,
            info=circuit.info,
            program=circuit.program,
            shots=submission.shots,
            seed=submission.seed,
            idempotency_key=key,
            owner=owner,
            memory=submission.memory,
            backend=backend,
        )

    def _check_memory(self, shots: int, info: CircuitInfo) -> None:
        """Refuse per-shot results over limits.max_memory_bits (shots x classical bits)."""
        # A circuit that measures nothing gets every qubit measured (the bound counts both).
        bits = info.num_clbits if info.measured else info.num_qubits + info.num_clbits
        if shots * bits > self._max_memory_bits:
            raise CircuitTooLargeError(
                f'"memory": true returns one bitstring per shot, and shots x classical bits may '
                f"be at most {self._max_memory_bits} (limits.max_memory_bits); got {shots} x "
                f"{bits} = {shots * bits}. Send fewer shots, or leave memory out for counts."
            )

    async def _put_circuits(self, tasks: list[Task], sources: Sequence[str]) -> list[Task]:
        """With an object store, write each task's circuit there and point the task at it."""
        if self._objects is None:
            return tasks
        objects = self._objects
        limit = asyncio.Semaphore(_OBJECT_PUTS_AT_ONCE)

        async def put(task: Task, source: str) -> Task:
            # The circuit object exists before the record that points to it.
            circuit_object = circuit_key(task.id)
            async with limit:
                await objects.put(circuit_object, source.encode("utf-8", "replace"))
            return replace(task, circuit_object=circuit_object, result_object=result_key(task.id))

        return list(await asyncio.gather(*map(put, tasks, sources)))


def _check_wait(wait_s: float) -> None:
    if not 0 < wait_s <= MAX_WAIT_SECONDS:
        raise InvalidRequestError(
            f"wait must be more than 0 and at most {MAX_WAIT_SECONDS:g} seconds; got {wait_s:g}."
        )


def _check_ids(task_ids: Sequence[str]) -> None:
    if not task_ids:
        raise InvalidRequestError("Name at least one task id.")
    if len(task_ids) > MAX_IDS_PER_READ:
        raise InvalidRequestError(
            f"At most {MAX_IDS_PER_READ} task ids may be read at once; got {len(task_ids)}."
        )
