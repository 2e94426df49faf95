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
)
from qtask.logs import get_logger
from qtask.worker.pool import ChildCrashedError, ChildFailedError, ChildPool, ChildTimeoutError

log = get_logger("service")

# A batch parses inline circuits back to back; yield to the event loop this often.
_YIELD_EVERY = 64
# Object-store writes one batch keeps in flight.
_OBJECT_PUTS_AT_ONCE = 32


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
    ) -> None:
        self._store = store
        self._queue = queue
        self._objects = objects
        self._ingestor = ingestor
        self._max_shots = limits.max_shots
        self._max_batch = limits.max_batch_tasks

    async def submit(self, submission: Submission, idempotency_key: str | None = None) -> Task:
        """Validate and durably store a task, then hand it to the workers."""
        task = await self._prepare(submission, idempotency_key)
        return (await self._store_and_publish([task]))[0]

    async def submit_many(
        self, submissions: Sequence[Submission], idempotency_key: str | None = None
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
        tasks = []
        for index, submission in enumerate(submissions):
            key = None if idempotency_key is None else f"{idempotency_key}/{index}"
            try:
                tasks.append(await self._parse(submission, key))
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

    async def read(self, task_id: str) -> TaskOutcome:
        """What a client may see of the task; raise TaskNotFoundError when there is none."""
        found = (await self._store.outcomes([task_id])).get(task_id)
        if found is None:
            raise TaskNotFoundError(task_id)
        return found

    async def cancel(self, task_id: str) -> TaskOutcome:
        """Cancel a queued task: it ends in error "Task was cancelled." and never runs.

        Cancelling a cancelled task answers the same again. A running or finished task raises
        TaskConflictError (a circuit already on the simulator is not interrupted).
        """
        task = await self._store.cancel(task_id, MSG_CANCELLED)
        if task is None:
            raise TaskNotFoundError(task_id)
        if task.status is Status.FAILED and task.error == MSG_CANCELLED:
            log.info("task_cancelled", task_id=task_id)
            metrics.TASKS_CANCELLED.inc()
            return TaskOutcome(task.id, task.status, task.result, task.error)
        if task.status is Status.RUNNING:
            raise TaskConflictError("The task is running; it can no longer be cancelled.")
        raise TaskConflictError(f"The task already ended ({task.status.value}).")

    async def active_counts(self) -> dict[str, int]:
        """How many tasks are queued and running."""
        return await self._store.active_counts()

    async def read_many(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        """What a client may see of the tasks among `task_ids` that exist (others left out)."""
        if not task_ids:
            raise InvalidRequestError("Name at least one task id.")
        if len(task_ids) > MAX_IDS_PER_READ:
            raise InvalidRequestError(
                f"At most {MAX_IDS_PER_READ} task ids may be read at once; got {len(task_ids)}."
            )
        return await self._store.outcomes(task_ids)

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

    async def _prepare(self, submission: Submission, key: str | None) -> Task:
        task = await self._parse(submission, key)
        return (await self._put_circuits([task], [submission.source]))[0]

    async def _parse(self, submission: Submission, key: str | None) -> Task:
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
