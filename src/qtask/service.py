"""The task service: the use cases behind the API, independent of HTTP and of the adapters."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace

from qtask import metrics
from qtask.adapters.objects import circuit_key, result_key
from qtask.circuits.ingest import IngestedCircuit, Limits, NeedsSlowPathError, ingest
from qtask.circuits.parse_child import ParseReply
from qtask.config import LimitsSettings
from qtask.constants import (
    FAULT_EXIT_AFTER_STORE_ENV,
    INLINE_PARSE_MAX_BYTES,
    MAX_IDS_PER_READ,
    MSG_CANCELLED,
)
from qtask.domain.ports import ObjectStore, TaskQueue, TaskStore
from qtask.domain.task import Status, Task, TaskOutcome, new_task_id
from qtask.errors import (
    CircuitError,
    CircuitTooLargeError,
    InvalidRequestError,
    PayloadTooLargeError,
    QueueUnavailableError,
    TaskConflictError,
    TaskNotFoundError,
    TooManyRequestsError,
)
from qtask.logs import get_logger
from qtask.worker.pool import ChildCrashedError, ChildFailedError, ChildPool, ChildTimeoutError

log = get_logger("service")

# A batch parses inline circuits back to back; yield to the event loop this often.
_YIELD_EVERY = 64
# Object-store writes one batch keeps in flight.
_OBJECT_PUTS_AT_ONCE = 32
# Retry-After of a 429 for too many pending tasks: a guess, as tasks end when they end.
_PENDING_RETRY_AFTER_S = 5.0


def _scoped(idempotency_key: str | None, owner: str | None) -> str | None:
    """The idempotency key as stored: each API key has its own namespace of them, so one
    key's Idempotency-Key can never return another key's task."""
    if idempotency_key is None or owner is None:
        return idempotency_key
    return f"{owner}:{idempotency_key}"


def limits_from(settings: LimitsSettings) -> Limits:
    """The circuit limits named by the settings."""
    return Limits(
        max_circuit_bytes=settings.max_circuit_bytes,
        max_qubits=settings.max_qubits,
        max_operations=settings.max_operations,
        max_statevector_bytes=settings.max_statevector_mb << 20,
    )


class CircuitIngestor:
    """Parses small, natively readable circuits inline and everything else in a child process."""

    def __init__(self, settings: LimitsSettings, pool: ChildPool | None) -> None:
        self._limits = limits_from(settings)
        self._pool = pool
        self._timeout = settings.parse_timeout_s

    async def ingest(self, source: str) -> IngestedCircuit:
        """Check and parse a circuit; raise CircuitError with the reason when it is not valid."""
        if len(source) <= INLINE_PARSE_MAX_BYTES:
            try:
                return ingest(source, self._limits, fast_only=True)
            except NeedsSlowPathError:
                pass
        if self._pool is None:
            return await asyncio.to_thread(ingest, source, self._limits)
        try:
            reply: ParseReply = await self._pool.call((source, self._limits), self._timeout)
        except ChildTimeoutError:
            raise CircuitTooLargeError(
                f"The circuit could not be parsed within {self._timeout:g} s."
            ) from None
        except (ChildCrashedError, ChildFailedError) as exc:
            raise CircuitError(f"The circuit could not be parsed: {exc}.") from None
        kind, circuit, status, message = reply
        if kind != "ok" or circuit is None:
            error = CircuitTooLargeError(message) if status == 422 else CircuitError(message)
            raise error
        return circuit


@dataclass(frozen=True, slots=True)
class Submission:
    """One circuit as a client submitted it, after the request's shape was checked."""

    source: str
    shots: int
    seed: int | None = None


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
    ) -> None:
        """`max_pending_per_owner`: tasks one API key may have queued or running (0: no cap)."""
        self._store = store
        self._queue = queue
        self._objects = objects
        self._ingestor = ingestor
        self._max_shots = limits.max_shots
        self._max_batch = limits.max_batch_tasks
        self._max_pending = max_pending_per_owner

    async def submit(
        self,
        submission: Submission,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> Task:
        """Validate and durably store a task, then hand it to the workers.

        `owner` is the calling API key's name (None when keys are off): the task is visible
        to that key only, and counts against its cap of pending tasks.
        """
        await self._check_pending(owner, 1)
        task = await self._prepare(submission, _scoped(idempotency_key, owner), owner)
        return (await self._store_and_publish([task]))[0]

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
        await self._check_pending(owner, len(submissions))
        scoped = _scoped(idempotency_key, owner)
        tasks = []
        for index, submission in enumerate(submissions):
            key = None if scoped is None else f"{scoped}/{index}"
            try:
                tasks.append(await self._parse(submission, key, owner))
            except InvalidRequestError as exc:
                raise type(exc)(f"tasks[{index}]: {exc}") from None
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # inline parses are synchronous: let others run
        tasks = await self._put_circuits(tasks, [s.source for s in submissions])
        return await self._store_and_publish(tasks)

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
        return found

    async def cancel(self, task_id: str, caller: str | None = None) -> TaskOutcome:
        """Cancel a queued or running task: it ends in error "Task was cancelled." at once.

        A queued task never runs. A running one's simulator run is not interrupted (it may
        share one Aer call with other tasks); its result is discarded when it arrives.
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
            return TaskOutcome(task.id, task.status, task.result, task.error, task.owner)
        raise TaskConflictError(f"The task already ended ({task.status.value}).")

    async def active_counts(self) -> dict[str, int]:
        """How many tasks are queued and running."""
        return await self._store.active_counts()

    async def read_many(
        self, task_ids: Sequence[str], caller: str | None = None
    ) -> dict[str, TaskOutcome]:
        """What `caller` may see of the tasks among `task_ids` (others left out)."""
        if not task_ids:
            raise InvalidRequestError("Name at least one task id.")
        if len(task_ids) > MAX_IDS_PER_READ:
            raise InvalidRequestError(
                f"At most {MAX_IDS_PER_READ} task ids may be read at once; got {len(task_ids)}."
            )
        found = await self._store.outcomes(task_ids)
        if caller is None:
            return found
        return {task_id: task for task_id, task in found.items() if task.visible_to(caller)}

    async def _check_pending(self, owner: str | None, adding: int) -> None:
        """Refuse with 429 when `adding` more tasks would take `owner` over its cap."""
        if owner is None or self._max_pending <= 0:
            return
        pending = await self._store.pending_count(owner)
        if pending + adding > self._max_pending:
            metrics.REQUESTS_REFUSED.labels("pending").inc()
            raise TooManyRequestsError(
                f"Too many pending tasks: key '{owner}' has {pending} queued or running, and "
                f"may have at most {self._max_pending}; retry when some have finished.",
                _PENDING_RETRY_AFTER_S,
            )

    async def _store_and_publish(self, tasks: list[Task]) -> list[Task]:
        """Store the tasks in one commit and publish the new ones; a task whose idempotency key
        was already used comes back as the task stored then, and is not published again."""
        stored = await self._store.create_many(tasks)
        new = [kept for kept, task in zip(stored, tasks, strict=True) if kept.id == task.id]
        if new:
            metrics.TASKS_SUBMITTED.inc(len(new))
            await self._publish(new)
        return stored

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
        if not 1 <= submission.shots <= self._max_shots:
            raise InvalidRequestError(
                f"shots must be between 1 and {self._max_shots}; got {submission.shots}."
            )
        circuit = await self._ingestor.ingest(submission.source)
        return Task(
            id=new_task_id(),
            source=submission.source,
            info=circuit.info,
            program=circuit.program,
            shots=submission.shots,
            seed=submission.seed,
            idempotency_key=key,
            owner=owner,
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
