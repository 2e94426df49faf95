"""The worker loop: take tasks from the queue, run them in child processes, store the outcome.

What a delivery does (run, discard, dead letter) and whether a requeue keeps the attempt
counted are domain.lifecycle's rules; the worker applies them. Rules it keeps:
- an outcome is stored durably before the delivery is acknowledged;
- a task already ended (a redelivery after a crash) is acknowledged without running again;
- a task whose attempts are used up ends in error with the reason of its last failure;
- a task that runs alone and is cancelled (or otherwise ends) meanwhile is stopped: its process
  is killed and replaced within ~CANCEL_CHECK_SECONDS; a batch's run is not stopped (the other
  tasks' results are in it), its cancelled tasks' results are refused when it ends;
- a crash or timeout of a batch sends each of its tasks back to run alone, so one poison
  circuit cannot take its neighbours' attempts with it; a timeout of a task running alone is
  final (the circuit is simply too slow), a crash is retried up to the attempt limit;
- on shutdown no new task is taken, running ones may finish within the grace period, and the
  rest go back to the queue with their attempt refunded;
- no error leaves a delivery held: one that could not be settled is let go unacknowledged, so
  its lease (or NATS ack wait) lapses and the queue hands it out again;
- the fetch loop and the heartbeat are supervised loops (qtask.runtime.supervision): an error is
  logged and the loop goes on, and a wedged loop makes /ready fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import structlog

from qtask import metrics
from qtask.config import WorkerSettings
from qtask.constants import (
    BATCH_MAX_OPERATIONS,
    BATCH_MAX_QUBITS,
    CANCEL_CHECK_SECONDS,
    FETCH_WAIT_SECONDS,
    LEASE_SECONDS,
    RUN_SETTLE_GRACE_SECONDS,
)
from qtask.domain.lifecycle import Redelivery, Requeue, given_up_message, on_delivery
from qtask.domain.object_keys import circuit_key
from qtask.domain.ports import Completion, Delivery, ObjectStore, TaskQueue, TaskStore
from qtask.domain.task import Status, Task, result_document
from qtask.errors import ExecutionError, ShuttingDownError, TaskNotFoundError
from qtask.execution.items import RunItem, RunOutcome
from qtask.logs import get_logger
from qtask.runtime.pool import (
    ChildCrashedError,
    ChildFailedError,
    ChildOutOfMemoryError,
    ChildPool,
    ChildTimeoutError,
)
from qtask.runtime.supervision import SupervisedLoop
from qtask.worker.remote import RemoteSubmitter

log = get_logger("worker")


class Worker:
    """Feeds a ChildPool from a TaskQueue and records outcomes in a TaskStore."""

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        pool: ChildPool,
        settings: WorkerSettings,
        *,
        worker_id: str = "embedded",
        heartbeat_s: float = LEASE_SECONDS / 3,
        fetch_wait_s: float = FETCH_WAIT_SECONDS,
        objects: ObjectStore | None = None,
        remote: RemoteSubmitter | None = None,
        cancel_check_s: float = CANCEL_CHECK_SECONDS,
    ) -> None:
        self._store = store
        self._cancel_check_s = cancel_check_s
        # Tasks on remote backends are submitted without a slot (worker.remote).
        self._remote = remote
        self._submissions: set[asyncio.Task[None]] = set()
        self._queue = queue
        self._pool = pool
        self._settings = settings
        self._worker_id = worker_id
        self._objects = objects
        # How often held tasks are reported alive: well inside the lease (or NATS ack wait).
        self._heartbeat_s = heartbeat_s
        self._fetch_wait_s = fetch_wait_s
        self._slots = _Slots(pool.size)
        self._held: dict[str, Delivery] = {}
        self._running: dict[asyncio.Task[None], float] = {}  # each run and when it started
        self._stopping = asyncio.Event()
        self._interrupted = False
        # An idle fetch loop completes an iteration every fetch_wait_s; waiting for a free
        # process while runs progress is not a stall (see _runs_progress).
        self._fetch_loop = SupervisedLoop("worker_fetch", self._fetch_once, interval=fetch_wait_s)
        self._heartbeat_loop = SupervisedLoop(
            "worker_heartbeat", self._renew_leases, interval=heartbeat_s, pause=heartbeat_s
        )
        self.completed = 0
        self.failed = 0
        self.retried = 0

    def start(self) -> None:
        """Start the fetch loop and the lease heartbeat in the background."""
        self._fetch_loop.start()
        self._heartbeat_loop.start()

    @property
    def loops(self) -> tuple[SupervisedLoop, SupervisedLoop]:
        """The fetch loop and the heartbeat, for readiness checks."""
        return self._fetch_loop, self._heartbeat_loop

    @property
    def in_flight(self) -> int:
        """Tasks this worker holds (running or about to)."""
        return len(self._held)

    async def stop(self, grace: float) -> None:
        """Stop taking tasks, let running ones finish for `grace` seconds, requeue the rest."""
        self._stopping.set()
        try:
            await self._fetch_loop.stop()  # never raises: a loop's error was logged already
            if self._submissions:
                _, unsent = await asyncio.wait(self._submissions, timeout=grace)
                for submission in unsent:  # their deliveries are released below
                    submission.cancel()
            if self._running:
                _, pending = await asyncio.wait(self._running, timeout=grace)
                if pending:
                    log.warning("shutdown_interrupting", tasks=len(self._held))
                    self._interrupted = True
                    await self._pool.close()
                    await asyncio.wait(pending)
            for delivery in list(self._held.values()):  # taken from the queue, never started
                await self._release(delivery, None, Requeue.SHUTDOWN)
        finally:
            await self._heartbeat_loop.stop()

    async def _fetch_once(self) -> None:
        """One iteration of the fetch loop: wait for free processes, fetch, start the batches."""
        batch_size = self._settings.batch_size
        with self._fetch_loop.waiting("a free worker process", self._runs_progress):
            free = await self._slots.take_all()
        deliveries: list[Delivery] = []
        started: set[str] = set()
        try:
            deliveries = await self._fetch(free * batch_size)
            runnable = await self._screen(deliveries)
            if self._remote is not None:
                for delivery in [d for d in runnable if self._remote.handles(d.task)]:
                    runnable.remove(delivery)
                    self._spawn_submission(delivery)
                    started.add(delivery.task.id)
            for batch in _plan(runnable, batch_size):
                if free:  # one slot per batch
                    free -= 1
                else:  # more batches than slots: wait for one each
                    with self._fetch_loop.waiting("a free worker process", self._runs_progress):
                        await self._slots.take_one()
                self._spawn(batch)
                started.update(delivery.task.id for delivery in batch)
        except Exception:
            # Fetched but not started: let go unacknowledged, the queue hands them out again.
            for delivery in deliveries:
                if delivery.task.id not in started:
                    self._held.pop(delivery.task.id, None)
            raise
        finally:
            self._slots.give(free)  # the slots this fetch did not need

    def _runs_progress(self, now: float) -> bool:
        """Whether waiting for a slot is legitimate: one is free, or a run is within its time."""
        if self._slots.free > 0:
            return True
        limit = self._settings.task_timeout_s + RUN_SETTLE_GRACE_SECONDS
        return any(now - started < limit for started in self._running.values())

    async def _fetch(self, limit: int) -> list[Delivery]:
        if self._stopping.is_set():
            return []
        fetch = asyncio.ensure_future(self._queue.fetch(limit, timeout=self._fetch_wait_s))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Whatever the fetch already claimed must be held, so stop() puts it back.
            if fetch.done() and not fetch.cancelled() and fetch.exception() is None:
                for delivery in fetch.result():
                    self._held[delivery.task.id] = delivery
            fetch.cancel()
            raise
        finally:
            stop.cancel()
        if fetch.done():
            deliveries = fetch.result()
        else:
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            return []
        for delivery in deliveries:
            self._held[delivery.task.id] = delivery
        if self._stopping.is_set():
            for delivery in deliveries:
                await self._release(delivery, None, Requeue.SHUTDOWN)
            return []
        return deliveries

    async def _screen(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """The deliveries to run; settle those already ended and fail those out of attempts."""
        runnable = []
        for delivery in deliveries:
            task = delivery.task
            try:
                decision = on_delivery(task, self._settings.max_attempts)
                if decision is Redelivery.DISCARD:
                    if task.status is Status.COMPLETED:  # a crash may have cut its move short
                        await self._leave_pending(task)
                    await self._settle(delivery)
                    continue
                if decision is Redelivery.DEAD_LETTER:
                    await self._fail(
                        delivery,
                        given_up_message(self._settings.max_attempts, task.last_error),
                        reason="attempts",
                        dead_letter=True,
                    )
                    continue
            except Exception:
                # Unacknowledged and no longer held: it comes back after its lease / ack wait.
                log.exception("screen_failed", task_id=task.id)
                self._held.pop(task.id, None)
                continue
            runnable.append(delivery)
        return runnable

    def _spawn_submission(self, delivery: Delivery) -> None:
        job = asyncio.create_task(self._submit_remote(delivery))
        self._submissions.add(job)
        job.add_done_callback(self._submissions.discard)

    async def _submit_remote(self, delivery: Delivery) -> None:
        """Submit a remote task; acknowledge once its job is stored (the poller ends it)."""
        assert self._remote is not None
        task = delivery.task
        try:
            job = await self._remote.submit(task, self._stopping)
        except ExecutionError as exc:  # refused for good, or unreachable past remote_timeout_s
            try:
                await self._fail(delivery, str(exc), reason="remote_rejected")
            except Exception:
                log.exception("record_failed", task_id=task.id)
                self._held.pop(task.id, None)
            return
        except ShuttingDownError:
            await self._release(delivery, None, Requeue.SHUTDOWN)
            return
        except Exception as exc:
            # Let go unacknowledged: the lease lapses and the redelivery submits again with
            # the same idempotency key (the same job comes back).
            log.warning("remote_submit_failed", task_id=task.id, reason=str(exc))
            self._held.pop(task.id, None)
            return
        log.info("remote_submitted", task_id=task.id, backend=task.backend, job_id=job.job_id)
        # A cancel that came while the job was being recorded made nothing due (there was no
        # job yet): the job would wait for its first poll before the poller cancelled it at
        # the provider. Looked at after the record, so one of the two always sees the other.
        try:
            if await self._ended(task.id):
                await self._remote.due_now(task.id)
        except Exception as exc:  # the job's first poll finds the task ended anyway
            log.warning("remote_cancel_check_failed", task_id=task.id, reason=str(exc))
        try:
            await self._settle(delivery)
        except Exception:  # redelivered: submitted again, the same job comes back
            log.exception("ack_failed", task_id=task.id)

    def _spawn(self, batch: list[Delivery]) -> None:
        job = asyncio.create_task(self._execute(batch))
        self._running[job] = time.monotonic()
        job.add_done_callback(self._run_done)

    def _run_done(self, job: asyncio.Task[None]) -> None:
        # One callback, so no check ever sees the run gone while its slot is still taken.
        del self._running[job]
        self._slots.give(1)

    async def _execute(self, batch: list[Delivery]) -> None:
        try:
            await self._run_batch(batch)
        except Exception:  # the store failed while recording: the lease lapses, the task reruns
            log.exception("batch_failed", tasks=[d.task.id for d in batch])
        finally:
            # Whatever was not settled is let go unacknowledged, never held (and kept alive by
            # the heartbeat) forever.
            for delivery in batch:
                self._held.pop(delivery.task.id, None)

    async def _run_batch(self, batch: list[Delivery]) -> None:
        items = [RunItem.from_task(delivery.task) for delivery in batch]
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                outcomes = await self._run_alone(batch[0], items)
                if outcomes is None:  # it ended meanwhile and its run was stopped
                    await self._settle(batch[0])
                    ran = time.perf_counter() - started
                    _canonical(batch[0].task, "stopped", ran, ran, 1)
                    return
            else:
                outcomes = await self._pool.call(items, self._settings.task_timeout_s)
        except ChildTimeoutError:
            if self._interrupted:
                for delivery in batch:
                    await self._release(delivery, None, Requeue.SHUTDOWN)
                return
            if len(batch) == 1:
                limit = self._settings.task_timeout_s
                await self._fail(
                    batch[0],
                    f"The task ran longer than the limit of {limit:g} s and was stopped.",
                    reason="timeout",
                )
            else:
                for delivery in batch:
                    await self._release(
                        delivery, "its batch ran out of time", Requeue.BATCH_TIMED_OUT
                    )
            return
        except (ChildCrashedError, ChildFailedError) as exc:
            if self._interrupted:
                for delivery in batch:
                    await self._release(delivery, None, Requeue.SHUTDOWN)
                return
            if isinstance(exc, ChildOutOfMemoryError) and len(batch) == 1:
                # Deterministic: a rerun would need the same memory again.
                await self._fail(
                    batch[0],
                    "The run was stopped: the circuit needed more memory than this service "
                    "allows one simulation (limits.max_statevector_mb).",
                    reason="memory",
                )
                return
            reason = str(exc)
            log.warning("worker_process_lost", tasks=[d.task.id for d in batch], reason=reason)
            for delivery in batch:
                await self._release(delivery, reason, Requeue.CRASHED)
            return
        elapsed = time.perf_counter() - started
        # Concurrently: each task still stores its result object, then its record, then acks,
        # but a batch's writes share round trips (and, on SQLite, one group commit).
        await asyncio.gather(
            *(
                self._record(delivery, outcome, elapsed, len(batch))
                for delivery, outcome in zip(batch, outcomes, strict=True)
            )
        )

    async def _run_alone(self, delivery: Delivery, items: list[RunItem]) -> list[RunOutcome] | None:
        """The run of a task alone in a process, or None when the task ended while it ran (a
        cancel): then the run is cancelled, which kills the process (the pool replaces it).

        Most runs end before the first look, so a run costs one timer, not a watching task
        (~20 us per run otherwise, which the one-task-at-a-time path pays on every task)."""
        job = asyncio.current_task()
        assert job is not None
        watch = _RunWatch(job)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._cancel_check_s, self._start_watch, watch, delivery.task.id)
        try:
            outcomes: list[RunOutcome] = await self._pool.call(items, self._settings.task_timeout_s)
            return outcomes
        except asyncio.CancelledError:
            # Ours only if the watch asked and nobody else did (asyncio.timeout's rule).
            if not watch.stopping or job.uncancel() > 0:
                raise
            log.info("run_stopped", task_id=delivery.task.id, reason="the task ended while it ran")
            return None
        finally:
            watch.finished = True  # set in the step the call returns in: no cancel after it
            timer.cancel()
            if watch.looking is not None:
                watch.looking.cancel()

    def _start_watch(self, watch: _RunWatch, task_id: str) -> None:
        if not watch.finished:
            watch.looking = asyncio.ensure_future(self._stop_when_ended(watch, task_id))

    async def _stop_when_ended(self, watch: _RunWatch, task_id: str) -> None:
        """Cancel the run once the store shows its task ended; a failed look is tried again."""
        while not watch.finished:
            try:
                ended = await self._ended(task_id)
            except Exception as exc:  # the store is unreachable: the run goes on
                log.warning("cancel_check_failed", task_id=task_id, reason=str(exc))
                ended = False
            if ended and not watch.finished:
                watch.stopping = True
                watch.job.cancel()  # raised where the job awaits the pool's call
                return
            await asyncio.sleep(self._cancel_check_s)

    async def _record(
        self, delivery: Delivery, outcome: RunOutcome, elapsed: float, batch_size: int
    ) -> None:
        task = delivery.task
        with structlog.contextvars.bound_contextvars(
            task_id=task.id, attempt=task.attempts, worker_id=self._worker_id
        ):
            try:
                if outcome.counts is not None:
                    # Per-shot results go where the result object goes; without an object
                    # store, into the record with the counts.
                    in_record = outcome.memory if task.memory else None
                    wrote = False
                    if self._objects is not None and task.result_object is not None:
                        # Stored before the record says completed, so it always exists then.
                        # Per-shot results cannot be written back from the record, so a task
                        # with them that already ended keeps the first run's object.
                        if not (task.memory and await self._ended(task.id)):
                            await self._objects.put(
                                task.result_object,
                                result_document(
                                    task, outcome.counts, method=outcome.method, memory=in_record
                                ),
                            )
                            wrote = True
                        in_record = None
                    try:
                        done: Completion | None = await self._store.complete(
                            task.id,
                            outcome.counts,
                            worker_id=self._worker_id,
                            attempt=task.attempts,
                            memory=in_record,
                        )
                    except TaskNotFoundError:  # cancelled, then removed by retention meanwhile
                        done = None
                    if done is not None and done.task.status is Status.COMPLETED:
                        await self._leave_pending(task)
                    await self._settle(delivery)
                    if done is not None and done.transitioned:  # this run completed it
                        self.completed += 1
                        metrics.TASKS_FINISHED.labels("completed", "").inc()
                        _canonical(
                            task, "completed", outcome.seconds, elapsed, batch_size, outcome.method
                        )
                    else:  # it ended while it ran (cancelled, or another run): the first stands
                        if wrote and (done is None or done.task.status is not Status.COMPLETED):
                            await self._discard_result(task)  # not a completed task's object
                        elif wrote and done is not None:
                            # This run's put may have replaced the first run's object.
                            await self._restore_result(done.task)
                        _canonical(
                            task, "discarded", outcome.seconds, elapsed, batch_size, outcome.method
                        )
                else:
                    await self._fail(
                        delivery, outcome.error or "The run failed.", reason="run_error"
                    )
                    _canonical(task, "failed", outcome.seconds, elapsed, batch_size, outcome.method)
            except Exception:
                # Not stored, so not acknowledged: the lease lapses and the task runs again.
                log.exception("record_failed")
                self._held.pop(task.id, None)

    async def _ended(self, task_id: str) -> bool:
        """Whether the task already ended, as the store says now. A task the store cannot show
        is not taken as ended: a task handed over before its insert committed (SQLite) is not
        visible yet; one really gone makes complete() fail, and the object is discarded."""
        current = await self._store.get(task_id)
        return current is not None and current.status.terminal

    async def _restore_result(self, stored: Task) -> None:
        """Write the stored result back over the object a refused duplicate run just replaced,
        so the object store says what the record says (the first result wins there too).

        The first run's per-shot results (memory) cannot be written back: the record does not
        hold them when an object store does. A duplicate of such a task therefore writes no
        object once the task has ended; only one that finishes in the moment between the first
        run's put and its record loses them, and reads then answer `"memory": null` rather than
        the duplicate's shots beside the first run's counts."""
        if self._objects is None or stored.result_object is None or stored.result is None:
            return
        try:
            await self._objects.put(stored.result_object, result_document(stored, stored.result))
        except Exception as exc:  # the record stays right; only its copy may differ
            log.warning("restore_result_failed", reason=str(exc))

    async def _leave_pending(self, task: Task) -> None:
        """The move's last step (domain.object_keys): delete a completed task's circuit from the
        pending area, its result document holding it now. Before the ack, so a worker killed
        first leaves a redelivery (NATS) that deletes it; a delete that fails, or a crash where
        nothing is redelivered (embedded), leaves the object until retention removes it with
        the task."""
        if self._objects is None or task.circuit_object != circuit_key(task.id):
            return  # no object store, or a circuit a version before the areas stored
        try:
            await self._objects.delete(task.circuit_object)
        except Exception as exc:
            log.warning("pending_delete_failed", task_id=task.id, reason=str(exc))

    async def _discard_result(self, task: Task) -> None:
        """Delete the result object written for a task whose record refused the result."""
        if self._objects is None or task.result_object is None:
            return
        try:
            await self._objects.delete(task.result_object)
        except Exception as exc:  # retention removes it with the record later
            log.warning("discard_failed", reason=str(exc))

    async def _fail(
        self, delivery: Delivery, message: str, *, reason: str, dead_letter: bool = False
    ) -> None:
        await self._store.fail(delivery.task.id, message, dead_letter=dead_letter)
        await self._settle(delivery)
        self.failed += 1
        metrics.TASKS_FINISHED.labels("failed", reason).inc()
        log.info("task_failed", task_id=delivery.task.id, reason=message)

    async def _release(self, delivery: Delivery, reason: str | None, cause: Requeue) -> None:
        try:
            await self._store.release(delivery.task.id, reason, penalize=cause.penalizes)
            await delivery.nak()
            self.retried += 1
            metrics.TASKS_REDELIVERED.inc()
        except Exception:
            log.exception("release_failed", task_id=delivery.task.id)
        finally:
            self._held.pop(delivery.task.id, None)

    async def _settle(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        finally:
            self._held.pop(delivery.task.id, None)

    async def _renew_leases(self) -> None:
        """One heartbeat: tell the queue every held task is still being worked on."""
        for delivery in list(self._held.values()):
            try:
                await delivery.in_progress()
            except Exception:
                log.exception("heartbeat_failed", task_id=delivery.task.id)


class _RunWatch:
    """What a lone run and the look at its task share (Worker._run_alone)."""

    __slots__ = ("finished", "job", "looking", "stopping")

    def __init__(self, job: asyncio.Task[object]) -> None:
        self.job = job
        self.finished = False  # the pool's call returned or raised: never cancel the job now
        self.stopping = False  # the look found the task ended and cancelled the job
        self.looking: asyncio.Task[None] | None = None


def _plan(deliveries: Sequence[Delivery], batch_size: int) -> list[list[Delivery]]:
    """Group small first-attempt tasks into batches, one backend per batch (an ideal Aer task
    must not wait seconds for a noisy device's run); everything else runs alone."""
    batches: list[list[Delivery]] = []
    current: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        if _batchable(delivery.task):
            group = current.setdefault(delivery.task.backend, [])
            group.append(delivery)
            if len(group) == batch_size:
                batches.append(current.pop(delivery.task.backend))
        else:
            batches.append([delivery])
    batches.extend(current.values())
    return batches


def _batchable(task: Task) -> bool:
    info = task.info
    return (
        task.attempts == 1
        and info.num_qubits <= BATCH_MAX_QUBITS
        and info.num_operations <= BATCH_MAX_OPERATIONS
    )


class _Slots:
    """Free child processes, counted; the fetch loop takes all free ones at once."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._changed = asyncio.Event()

    async def take_all(self) -> int:
        while self.free == 0:
            self._changed.clear()
            await self._changed.wait()
        taken, self.free = self.free, 0
        return taken

    async def take_one(self) -> None:
        while self.free == 0:
            self._changed.clear()
            await self._changed.wait()
        self.free -= 1

    def give(self, count: int) -> None:
        self.free += count
        self._changed.set()


def _canonical(
    task: Task,
    outcome: str,
    run_s: float,
    batch_s: float,
    batch_size: int,
    method: str | None = None,
) -> None:
    queue_wait_s = (task.started_at or task.created_at) - task.created_at
    metrics.QUEUE_WAIT_SECONDS.observe(max(queue_wait_s, 0.0))
    metrics.RUN_SECONDS.observe(run_s)
    log.info(
        "task_finished",
        task_id=task.id,
        outcome=outcome,
        backend=task.backend,
        method=method,
        qubits=task.info.num_qubits,
        shots=task.shots,
        attempts=task.attempts,
        queue_wait_s=round(queue_wait_s, 6),
        run_s=round(run_s, 6),
        batch_s=round(batch_s, 6),
        batch_size=batch_size,
    )
