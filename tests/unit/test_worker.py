"""The worker loop, with the in-memory store and a fake pool standing in for child processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
import structlog.testing

from qtask.config import WorkerSettings
from qtask.constants import CANCEL_CHECK_SECONDS, RUN_SETTLE_GRACE_SECONDS
from qtask.domain.ports import Delivery
from qtask.domain.task import CircuitInfo, Status, Task, new_task_id
from qtask.errors import QueueUnavailableError, StoreUnavailableError
from qtask.execution.items import RunItem, RunOutcome
from qtask.runtime.pool import ChildCrashedError, ChildFailedError, ChildTimeoutError
from qtask.testing import InMemoryDelivery, InMemoryObjectStore, InMemoryTaskStore
from qtask.worker.runner import Worker, _plan
from qtask_testkit import BELL, BELL_INFO

INFO = BELL_INFO
# Too wide to share a batch (more than BATCH_MAX_QUBITS).
BIG_INFO = replace(INFO, num_qubits=20, num_clbits=20)
CRASH = "the worker process died (killed by signal SIGKILL)"

Behaviour = Callable[[list[RunItem], float], Awaitable[list[RunOutcome]]]


def counts_for(items: Sequence[RunItem]) -> list[RunOutcome]:
    return [RunOutcome(item.task_id, counts={"00": item.shots}) for item in items]


async def succeed(items: list[RunItem], timeout: float) -> list[RunOutcome]:
    return counts_for(items)


class FakePool:
    """Stands in for ChildPool: records each call and answers as `behaviour` says."""

    def __init__(self, behaviour: Behaviour = succeed, size: int = 1) -> None:
        self.size = size
        self.behaviour = behaviour
        self.calls: list[list[RunItem]] = []
        self.timeouts: list[float] = []
        self.closed = asyncio.Event()

    @property
    def batch_sizes(self) -> list[int]:
        return [len(call) for call in self.calls]

    async def call(self, items: list[RunItem], timeout: float) -> list[RunOutcome]:
        self.calls.append(list(items))
        self.timeouts.append(timeout)
        return await self.behaviour(items, timeout)

    async def close(self) -> None:
        self.closed.set()


class RecordingStore(InMemoryTaskStore):
    """The in-memory store, keeping every delivery it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[InMemoryDelivery] = []

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        deliveries = await super().fetch(max_tasks, timeout)
        for delivery in deliveries:
            assert isinstance(delivery, InMemoryDelivery)
            self.deliveries.append(delivery)
        return deliveries

    def deliveries_of(self, task_id: str) -> list[InMemoryDelivery]:
        return [d for d in self.deliveries if d.task.id == task_id]


def settings(**changes: object) -> WorkerSettings:
    values: dict[str, object] = {
        "processes": 1,
        "max_attempts": 3,
        "task_timeout_s": 5.0,
        "batch_size": 8,
    }
    values.update(changes)
    return WorkerSettings(**values)  # type: ignore[arg-type]


def make_task(info: CircuitInfo = INFO, **changes: object) -> Task:
    task = Task(id=new_task_id(), source=BELL, info=info, shots=10)
    return replace(task, **changes)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def all_terminal(store: InMemoryTaskStore) -> Callable[[], bool]:
    return lambda: all(task.status.terminal for task in store.tasks.values())


async def run_until_done(
    store: InMemoryTaskStore,
    pool: FakePool,
    worker_settings: WorkerSettings,
    *,
    cancel_check_s: float = CANCEL_CHECK_SECONDS,
) -> Worker:
    worker = Worker(store, store, pool, worker_settings, cancel_check_s=cancel_check_s)  # type: ignore[arg-type]
    worker.start()
    try:
        await wait_until(all_terminal(store))
    finally:
        await worker.stop(grace=1.0)
    return worker


async def run_until_first_ack(store: RecordingStore, worker: Worker) -> list[dict[str, Any]]:
    """Run `worker` until the first delivery is acknowledged; the log lines meanwhile."""
    with structlog.testing.capture_logs() as logs:
        worker.start()
        try:
            await wait_until(lambda: bool(store.deliveries) and store.deliveries[0].acked == 1)
        finally:
            await worker.stop(grace=1.0)
    return logs


# --- the happy path --------------------------------------------------------------------------


async def test_task_completes_and_is_acked() -> None:
    store = RecordingStore()
    task = await store.create(make_task())
    pool = FakePool()
    worker = await run_until_done(store, pool, settings(task_timeout_s=7.5))

    done = store.tasks[task.id]
    assert done.status is Status.COMPLETED
    assert done.result == {"00": 10}
    assert done.attempts == 1
    assert done.finished_at is not None
    [delivery] = store.deliveries
    assert delivery.acked == 1
    assert delivery.naked == 0
    assert pool.batch_sizes == [1]
    assert pool.timeouts == [7.5]
    [item] = pool.calls[0]
    assert item == RunItem.from_task(delivery.task)
    assert worker.completed == 1
    assert worker.failed == 0
    assert worker.in_flight == 0


async def test_each_outcome_has_one_canonical_log_line() -> None:
    store = RecordingStore()
    task = await store.create(make_task(shots=10))
    with structlog.testing.capture_logs() as logs:
        await run_until_done(store, FakePool(), settings())
    [line] = [entry for entry in logs if entry["event"] == "task_finished"]
    assert line["task_id"] == task.id
    assert line["outcome"] == "completed"
    assert line["backend"] == "aer"  # the configured backend the task names
    assert (line["qubits"], line["shots"], line["attempts"]) == (2, 10, 1)
    assert line["queue_wait_s"] >= 0
    assert line["run_s"] >= 0
    assert BELL not in repr(logs)  # circuits stay out of the logs


async def test_the_result_of_a_task_cancelled_while_it_ran_is_discarded() -> None:
    store = RecordingStore()
    objects = InMemoryObjectStore()
    task = await store.create(make_task(result_object="results/ab/x.json"))

    async def cancelled_meanwhile(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        await store.cancel(task.id, "Task was cancelled.")
        return counts_for(items)

    pool = FakePool(cancelled_meanwhile)
    worker = Worker(store, store, pool, settings(), objects=objects)  # type: ignore[arg-type]
    logs = await run_until_first_ack(store, worker)
    ended = store.tasks[task.id]
    assert (ended.status, ended.error, ended.result) == (Status.FAILED, "Task was cancelled.", None)
    assert objects.objects == {}  # the result object written before the record refused it
    assert worker.completed == 0
    [line] = [entry for entry in logs if entry["event"] == "task_finished"]
    assert line["outcome"] == "discarded"


async def test_a_task_cancelled_while_it_runs_alone_has_its_run_stopped() -> None:
    # A long simulation cancelled by its user must not hold a worker process to its end: the
    # call is cancelled (the real pool kills and replaces the process), the delivery acked.
    store = RecordingStore()
    task = await store.create(make_task(info=BIG_INFO))
    stopped = asyncio.Event()

    async def long_run(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        await store.cancel(task.id, "Task was cancelled.")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return counts_for(items)

    pool = FakePool(long_run)
    worker = Worker(store, store, pool, settings(), cancel_check_s=0.05)  # type: ignore[arg-type]
    logs = await run_until_first_ack(store, worker)
    assert stopped.is_set()
    assert store.tasks[task.id].status is Status.FAILED
    assert worker.in_flight == 0
    [line] = [entry for entry in logs if entry["event"] == "task_finished"]
    assert line["outcome"] == "stopped"


async def test_a_lone_run_looked_at_many_times_completes_as_usual() -> None:
    store = RecordingStore()
    task = await store.create(make_task(info=BIG_INFO))

    async def slow(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        await asyncio.sleep(0.3)  # fifteen looks at the store meanwhile
        return counts_for(items)

    await run_until_done(store, FakePool(slow), settings(), cancel_check_s=0.02)
    assert store.tasks[task.id].status is Status.COMPLETED
    assert store.deliveries[0].acked == 1


async def test_a_batch_whose_task_is_cancelled_runs_on_for_the_others() -> None:
    store = RecordingStore()
    tasks = [await store.create(make_task()) for _ in range(2)]

    async def one_cancelled(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        await store.cancel(tasks[0].id, "Task was cancelled.")
        await asyncio.sleep(0.3)  # several cancel checks' worth
        return counts_for(items)

    pool = FakePool(one_cancelled)
    await run_until_done(store, pool, settings(), cancel_check_s=0.05)
    assert pool.batch_sizes == [2]
    assert store.tasks[tasks[1].id].status is Status.COMPLETED


async def test_task_submitted_while_running_is_picked_up() -> None:
    store = RecordingStore()
    worker = Worker(store, store, FakePool(), settings())  # type: ignore[arg-type]
    worker.start()
    try:
        await asyncio.sleep(0.02)  # the worker is now waiting in fetch
        task = await store.create(make_task())
        await wait_until(lambda: store.tasks[task.id].status is Status.COMPLETED, timeout=2.0)
    finally:
        await worker.stop(grace=1.0)


async def test_run_error_ends_task_in_error_and_acks() -> None:
    async def broken(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        return [RunOutcome(item.task_id, error="The simulator failed: boom") for item in items]

    store = RecordingStore()
    task = await store.create(make_task())
    worker = await run_until_done(store, FakePool(broken), settings())
    failed = store.tasks[task.id]
    assert failed.status is Status.FAILED
    assert failed.error == "The simulator failed: boom"
    assert store.deliveries[0].acked == 1
    assert worker.failed == 1


# --- redelivery of a settled task ----------------------------------------------------------


class ScriptedQueue:
    """A queue that hands out given deliveries once, then nothing."""

    def __init__(self, deliveries: list[Delivery]) -> None:
        self._pending = list(deliveries)
        self.fetched = asyncio.Event()

    async def publish(self, tasks: Sequence[Task]) -> None:
        return None

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        if self._pending:
            batch, self._pending = self._pending[:max_tasks], self._pending[max_tasks:]
            return batch
        self.fetched.set()
        await asyncio.sleep(timeout)
        return []

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED])
async def test_redelivered_terminal_task_is_acked_not_rerun(status: Status) -> None:
    store = InMemoryTaskStore()
    task = await store.create(make_task())
    if status is Status.COMPLETED:
        settled = (await store.complete(task.id, {"11": 10})).task
    else:
        settled = await store.fail(task.id, "earlier failure")
    delivery = InMemoryDelivery(store, settled)
    queue = ScriptedQueue([delivery])
    pool = FakePool()
    worker = Worker(store, queue, pool, settings())  # type: ignore[arg-type]
    worker.start()
    try:
        await asyncio.wait_for(queue.fetched.wait(), 2.0)
    finally:
        await worker.stop(grace=1.0)
    assert pool.calls == []
    assert delivery.acked == 1
    assert delivery.naked == 0
    assert store.tasks[task.id] == settled
    assert worker.completed == 0


# --- crashes, timeouts, retries ------------------------------------------------------------


async def test_crash_releases_task_and_retry_completes() -> None:
    calls = 0

    async def crash_once(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ChildCrashedError(CRASH)
        return counts_for(items)

    store = RecordingStore()
    task = await store.create(make_task())
    pool = FakePool(crash_once)
    worker = await run_until_done(store, pool, settings())

    done = store.tasks[task.id]
    assert done.status is Status.COMPLETED
    assert done.attempts == 2  # the crashed attempt counts
    assert done.last_error == CRASH
    first, second = store.deliveries_of(task.id)
    assert (first.naked, first.acked) == (1, 0)
    assert (second.naked, second.acked) == (0, 1)
    assert first.task.attempts == 1
    assert second.task.attempts == 2
    assert worker.retried == 1
    assert worker.completed == 1


async def test_handler_failure_is_retried_like_a_crash() -> None:
    calls = 0

    async def fail_once(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ChildFailedError("MemoryError: ")
        return counts_for(items)

    store = RecordingStore()
    task = await store.create(make_task())
    await run_until_done(store, FakePool(fail_once), settings())
    done = store.tasks[task.id]
    assert done.status is Status.COMPLETED
    assert done.attempts == 2
    assert done.last_error == "MemoryError: "


async def test_task_crashing_every_time_fails_after_max_attempts() -> None:
    async def always_crash(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        raise ChildCrashedError(CRASH)

    store = RecordingStore()
    task = await store.create(make_task())
    pool = FakePool(always_crash)
    worker = await run_until_done(store, pool, settings(max_attempts=3))

    failed = store.tasks[task.id]
    assert failed.status is Status.FAILED
    assert failed.error is not None
    assert "3 attempts" in failed.error
    assert CRASH in failed.error
    assert failed.result is None
    assert pool.batch_sizes == [1, 1, 1]  # never run a fourth time
    deliveries = store.deliveries_of(task.id)
    assert [d.task.attempts for d in deliveries] == [1, 2, 3, 4]
    assert [d.naked for d in deliveries] == [1, 1, 1, 0]
    assert deliveries[-1].acked == 1
    assert worker.failed == 1


async def test_max_attempts_one_fails_after_first_crash() -> None:
    async def always_crash(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        raise ChildCrashedError(CRASH)

    store = RecordingStore()
    task = await store.create(make_task())
    pool = FakePool(always_crash)
    await run_until_done(store, pool, settings(max_attempts=1))
    assert store.tasks[task.id].status is Status.FAILED
    assert "1 attempts" in (store.tasks[task.id].error or "")
    assert pool.batch_sizes == [1]


async def test_timeout_of_a_solo_task_is_final() -> None:
    async def too_slow(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        raise ChildTimeoutError(f"no answer within {timeout:g} s")

    store = RecordingStore()
    task = await store.create(make_task())
    pool = FakePool(too_slow)
    await run_until_done(store, pool, settings(task_timeout_s=2.5))

    failed = store.tasks[task.id]
    assert failed.status is Status.FAILED
    assert failed.error is not None
    assert "limit of 2.5 s" in failed.error
    assert failed.attempts == 1
    assert pool.batch_sizes == [1]  # not retried
    assert store.deliveries[0].acked == 1


async def test_crashing_batch_is_retried_one_task_at_a_time() -> None:
    async def crash_batches(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        if len(items) > 1:
            raise ChildCrashedError(CRASH)
        return counts_for(items)

    store = RecordingStore()
    tasks = [await store.create(make_task()) for _ in range(3)]
    pool = FakePool(crash_batches)
    await run_until_done(store, pool, settings(batch_size=8))

    assert pool.batch_sizes == [3, 1, 1, 1]
    for task in tasks:
        done = store.tasks[task.id]
        assert done.status is Status.COMPLETED
        assert done.attempts == 2
        assert done.last_error == CRASH


async def test_batch_timeout_sends_each_task_back_to_run_alone() -> None:
    async def slow_batches(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        if len(items) > 1:
            raise ChildTimeoutError("no answer")
        return counts_for(items)

    store = RecordingStore()
    tasks = [await store.create(make_task()) for _ in range(2)]
    pool = FakePool(slow_batches)
    await run_until_done(store, pool, settings(batch_size=8))

    assert pool.batch_sizes == [2, 1, 1]
    for task in tasks:
        done = store.tasks[task.id]
        assert done.status is Status.COMPLETED
        assert done.last_error == "its batch ran out of time"


async def test_only_the_poison_task_of_a_batch_fails() -> None:
    store = RecordingStore()
    good = [await store.create(make_task()) for _ in range(2)]
    poison = await store.create(make_task(source=BELL + "// poison\n"))

    async def poison_kills(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        if any("poison" in item.source for item in items):
            raise ChildCrashedError(CRASH)
        return counts_for(items)

    pool = FakePool(poison_kills)
    await run_until_done(store, pool, settings(max_attempts=2))

    assert store.tasks[poison.id].status is Status.FAILED
    for task in good:
        assert store.tasks[task.id].status is Status.COMPLETED
        assert store.tasks[task.id].attempts == 2


# --- planning --------------------------------------------------------------------------------


async def test_small_first_attempt_tasks_are_batched_up_to_batch_size() -> None:
    store = RecordingStore()
    for _ in range(10):
        await store.create(make_task())
    pool = FakePool()
    await run_until_done(store, pool, settings(batch_size=4))
    assert pool.batch_sizes == [4, 4, 2]
    assert all(task.status is Status.COMPLETED for task in store.tasks.values())


async def test_seeded_and_unseeded_results_go_to_their_own_tasks() -> None:
    store = RecordingStore()
    tasks = [await store.create(make_task(shots=n)) for n in (5, 6, 7)]
    await run_until_done(store, FakePool(), settings())
    assert [store.tasks[t.id].result for t in tasks] == [{"00": 5}, {"00": 6}, {"00": 7}]


class PlanDelivery:
    def __init__(self, task: Task) -> None:
        self.task = task


def planned(info: CircuitInfo = INFO, attempts: int = 1, **changes: object) -> PlanDelivery:
    return PlanDelivery(make_task(info, attempts=attempts, status=Status.RUNNING, **changes))


def test_plan_batches_small_first_attempts() -> None:
    deliveries = [planned() for _ in range(5)]
    batches = _plan(deliveries, 2)  # type: ignore[arg-type]
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [d for b in batches for d in b] == deliveries  # order kept


def test_plan_runs_retries_and_large_circuits_alone() -> None:
    small1, small2, small3 = planned(), planned(), planned()
    big = planned(BIG_INFO)
    retry = planned(attempts=2)
    long_one = planned(replace(INFO, num_operations=2001))
    deliveries = [small1, big, small2, retry, small3, long_one]
    batches = _plan(deliveries, 2)  # type: ignore[arg-type]
    assert batches == [[big], [small1, small2], [retry], [long_one], [small3]]


def test_plan_boundaries() -> None:
    edge = planned(replace(INFO, num_qubits=16, num_operations=2000))
    small = planned()
    assert _plan([edge, small], 8) == [[edge, small]]  # type: ignore[arg-type]
    wide = planned(replace(INFO, num_qubits=17))
    assert _plan([wide, small], 8) == [[wide], [small]]  # type: ignore[arg-type]


def test_plan_never_mixes_backends_in_one_batch() -> None:
    # An ideal Aer task batched with a noisy device's would wait seconds for the device's run.
    aer1, dev1, aer2, dev2, aer3 = (
        planned(backend=name) for name in ("aer", "fake_fez", "aer", "fake_fez", "aer")
    )
    batches = _plan([aer1, dev1, aer2, dev2, aer3], 2)  # type: ignore[arg-type]
    assert batches == [[aer1, aer2], [dev1, dev2], [aer3]]


def test_plan_batch_size_one_runs_everything_alone() -> None:
    deliveries = [planned() for _ in range(3)]
    assert _plan(deliveries, 1) == [[d] for d in deliveries]  # type: ignore[arg-type]


def test_plan_empty() -> None:
    assert _plan([], 4) == []


# --- shutdown --------------------------------------------------------------------------------


async def test_stop_waits_for_a_run_that_finishes_within_grace() -> None:
    started = asyncio.Event()

    async def slowish(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        started.set()
        await asyncio.sleep(0.1)
        return counts_for(items)

    store = RecordingStore()
    task = await store.create(make_task())
    pool = FakePool(slowish)
    worker = Worker(store, store, pool, settings())  # type: ignore[arg-type]
    worker.start()
    await asyncio.wait_for(started.wait(), 2.0)
    await worker.stop(grace=5.0)
    assert store.tasks[task.id].status is Status.COMPLETED
    assert not pool.closed.is_set()


async def test_stop_after_grace_requeues_running_and_held_tasks() -> None:
    started = asyncio.Event()

    async def hang_until_closed(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        started.set()
        await pool.closed.wait()
        raise ChildCrashedError("the worker process died (killed by signal SIGKILL)")

    store = RecordingStore()
    # One pool slot: the big task runs alone and hangs; the small one is fetched with it but
    # waits for a slot, so it is held without running.
    small = await store.create(make_task())
    big = await store.create(make_task(BIG_INFO))
    pool = FakePool(hang_until_closed)
    worker = Worker(store, store, pool, settings(batch_size=2))  # type: ignore[arg-type]
    worker.start()
    await asyncio.wait_for(started.wait(), 2.0)
    assert worker.in_flight == 2

    began = time.monotonic()
    await worker.stop(grace=0.1)
    assert time.monotonic() - began < 2.0
    assert pool.closed.is_set()
    assert pool.batch_sizes == [1]
    assert [item.task_id for item in pool.calls[0]] == [big.id]
    for task_id in (small.id, big.id):
        requeued = store.tasks[task_id]
        assert requeued.status is Status.QUEUED
        assert requeued.attempts == 0  # the interrupted attempt is refunded
        [delivery] = store.deliveries_of(task_id)
        assert delivery.naked == 1
        assert delivery.acked == 0
    assert worker.in_flight == 0


async def test_stop_of_idle_worker_is_prompt() -> None:
    store = RecordingStore()
    worker = Worker(store, store, FakePool(), settings())  # type: ignore[arg-type]
    worker.start()
    await asyncio.sleep(0.02)
    began = time.monotonic()
    await worker.stop(grace=5.0)
    assert time.monotonic() - began < 1.0
    assert store.deliveries == []


async def test_no_task_is_taken_after_stop() -> None:
    store = RecordingStore()
    pool = FakePool()
    worker = Worker(store, store, pool, settings())  # type: ignore[arg-type]
    worker.start()
    await worker.stop(grace=1.0)
    task = await store.create(make_task())
    await asyncio.sleep(0.05)
    assert store.tasks[task.id].status is Status.QUEUED
    assert pool.calls == []


async def test_lapsed_lease_is_redelivered_and_completed_once() -> None:
    # A worker whose lease lapsed while it ran still stores its result; the first result wins.
    store = RecordingStore()
    task = await store.create(make_task())
    [stale] = await store.fetch(1, timeout=0)
    store.expire_lease(task.id)
    await run_until_done(store, FakePool(), settings())
    assert store.tasks[task.id].status is Status.COMPLETED
    assert store.tasks[task.id].attempts == 2
    late = (await store.complete(stale.task.id, {"11": 1})).task
    assert late.result == {"00": 10}


# --- a store or queue that fails at the wrong moment ---------------------------------------


class ScriptedFirstStore(RecordingStore):
    """The in-memory store, handing out `scripted` deliveries on its first fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.scripted: list[Delivery] = []

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        if self.scripted:
            batch, self.scripted = self.scripted, []
            return batch
        return await super().fetch(max_tasks, timeout)


class UnackableDelivery(InMemoryDelivery):
    """A delivery whose ack fails, as when NATS goes away at that moment."""

    async def ack(self) -> None:
        raise QueueUnavailableError("not connected to NATS")


class FailingFailStore(RecordingStore):
    """The in-memory store whose next `failures` calls of fail() raise."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def fail(self, task_id: str, message: str, *, dead_letter: bool = False) -> Task:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("Redis is unreachable")
        return await super().fail(task_id, message, dead_letter=dead_letter)


async def test_ack_error_settling_a_redelivered_task_leaves_the_worker_taking_tasks() -> None:
    store = ScriptedFirstStore()
    ended = (await store.complete((await store.create(make_task())).id, {"11": 10})).task
    broken = UnackableDelivery(store, ended)
    store.scripted = [broken]
    fresh = await store.create(make_task())
    worker = Worker(store, store, FakePool(), settings(), fetch_wait_s=0.05)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        worker.start()
        try:
            await wait_until(lambda: store.tasks[fresh.id].status is Status.COMPLETED)
            assert worker.in_flight == 0  # dropped, not held: the queue redelivers it
        finally:
            await worker.stop(grace=1.0)
    assert (broken.acked, broken.naked) == (0, 0)
    assert store.tasks[ended.id] == ended
    [line] = [entry for entry in logs if entry["event"] == "screen_failed"]
    assert line["task_id"] == ended.id
    assert line["exc_info"] is True


async def test_store_error_failing_an_exhausted_task_is_recorded_on_redelivery() -> None:
    store = FailingFailStore(failures=1)
    exhausted = await store.create(make_task(attempts=3))  # the next claim is attempt 4 of 3
    fresh = await store.create(make_task())
    pool = FakePool()
    worker = Worker(store, store, pool, settings(max_attempts=3), fetch_wait_s=0.05)  # type: ignore[arg-type]
    worker.start()
    try:
        await wait_until(lambda: store.tasks[fresh.id].status is Status.COMPLETED)
        await wait_until(lambda: worker.in_flight == 0)
        [first] = store.deliveries_of(exhausted.id)
        assert (first.acked, first.naked) == (0, 0)
        store.expire_lease(exhausted.id)  # its lease lapses: the store hands it out again
        await wait_until(lambda: store.tasks[exhausted.id].status is Status.FAILED)
    finally:
        await worker.stop(grace=1.0)
    assert "3 attempts" in (store.tasks[exhausted.id].error or "")
    assert [d["task_id"] for d in store.dead] == [exhausted.id]
    assert [d.acked for d in store.deliveries_of(exhausted.id)] == [0, 1]
    assert [item.task_id for call in pool.calls for item in call] == [fresh.id]


async def test_store_error_recording_a_timeout_lets_the_lease_lapse() -> None:
    async def too_slow(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        raise ChildTimeoutError(f"no answer within {timeout:g} s")

    store = FailingFailStore(failures=1)
    task = await store.create(make_task())
    # A fast heartbeat: a delivery still held would have its lease renewed at once.
    worker = Worker(store, store, FakePool(too_slow), settings(), heartbeat_s=0.01)  # type: ignore[arg-type]
    worker.start()
    try:
        await wait_until(lambda: store.failures == 0 and worker.in_flight == 0)
        [first] = store.deliveries_of(task.id)
        assert (first.acked, first.naked) == (0, 0)
        assert store.tasks[task.id].status is Status.RUNNING
        store.expire_lease(task.id)
        await wait_until(lambda: store.tasks[task.id].status is Status.FAILED)
    finally:
        await worker.stop(grace=1.0)
    failed = store.tasks[task.id]
    assert "limit of 5 s" in (failed.error or "")
    assert failed.attempts == 2
    assert [d.acked for d in store.deliveries_of(task.id)] == [0, 1]


class DyingQueue(InMemoryTaskStore):
    """A queue whose fetch kills the task that calls it with an exception no handler expects."""

    def __init__(self) -> None:
        super().__init__()
        self.died = asyncio.Event()

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        self.died.set()
        raise LoopKiller("wedged beyond repair")


class LoopKiller(BaseException):
    """Not an Exception: supervision logs and backs off from those, this ends the loop."""


async def test_stop_after_the_fetch_loop_died_does_not_raise_and_stops_the_heartbeat() -> None:
    store = RecordingStore()
    queue = DyingQueue()
    worker = Worker(store, queue, FakePool(), settings())  # type: ignore[arg-type]
    worker.start()
    await asyncio.wait_for(queue.died.wait(), 2.0)
    fetch_loop, heartbeat_loop = worker.loops
    await wait_until(lambda: fetch_loop.ended)
    with pytest.raises(RuntimeError, match=r"worker_fetch ended: LoopKiller: wedged beyond repair"):
        fetch_loop.status()
    await worker.stop(grace=1.0)  # does not raise the loop's error
    assert heartbeat_loop.ended


# --- liveness of the fetch loop --------------------------------------------------------------


async def test_fetch_loop_waiting_for_a_process_while_a_long_run_progresses_stays_ready() -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def long_run(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        started.set()
        await finish.wait()
        return counts_for(items)

    store = RecordingStore()
    task = await store.create(make_task())
    worker = Worker(store, store, FakePool(long_run), settings(task_timeout_s=600.0))  # type: ignore[arg-type]
    fetch_loop, _ = worker.loops
    worker.start()
    try:
        await asyncio.wait_for(started.wait(), 2.0)
        await wait_until(lambda: "waiting for a free worker process" in fetch_loop.status())
        # Long after three fetch intervals, the loop is still live while the run is in time...
        in_time = time.monotonic() + 600.0
        assert fetch_loop.status(in_time).startswith("ok (waiting for a free worker process")
        # ...and stale once the run is past its limit and the grace for storing its outcome.
        wedged = time.monotonic() + 600.0 + RUN_SETTLE_GRACE_SECONDS + 1.0
        with pytest.raises(RuntimeError, match=r"^worker_fetch: no completed iteration for"):
            fetch_loop.status(wedged)
        finish.set()
        await wait_until(lambda: store.tasks[task.id].status is Status.COMPLETED)
    finally:
        await worker.stop(grace=1.0)


async def test_fetch_loop_on_an_empty_queue_completes_an_iteration_each_fetch_wait() -> None:
    store = RecordingStore()
    worker = Worker(store, store, FakePool(), settings(), fetch_wait_s=0.02)  # type: ignore[arg-type]
    fetch_loop, _ = worker.loops
    worker.start()
    try:
        await wait_until(lambda: fetch_loop.iterations >= 3)
        assert fetch_loop.status().startswith("ok (last iteration")
        assert fetch_loop.interval == 0.02
    finally:
        await worker.stop(grace=1.0)


class FlakyFetchStore(RecordingStore):
    """The in-memory store whose next `failures` fetches raise, as NATS down would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        if self.failures:
            self.failures -= 1
            raise QueueUnavailableError("cannot fetch from NATS")
        return await super().fetch(max_tasks, timeout)


async def test_fetch_errors_are_logged_backed_off_and_the_loop_recovers() -> None:
    store = FlakyFetchStore(failures=3)
    task = await store.create(make_task())
    with structlog.testing.capture_logs() as logs:
        worker = await run_until_done(store, FakePool(), settings())
    assert store.tasks[task.id].status is Status.COMPLETED
    assert worker.completed == 1
    failed = [entry for entry in logs if entry["event"] == "loop_failed"]
    assert [(e["loop"], e["retry_in_s"]) for e in failed] == [
        ("worker_fetch", 0.1),
        ("worker_fetch", 0.2),
        ("worker_fetch", 0.4),
    ]


async def test_the_method_and_backend_are_in_the_log_line_and_the_result_object() -> None:
    store = RecordingStore()
    objects = InMemoryObjectStore()
    task = await store.create(
        make_task(shots=10, result_object="results/ab/m.json", backend="fake_fez")
    )

    async def mps(items: list[RunItem], timeout: float) -> list[RunOutcome]:
        return [
            RunOutcome(i.task_id, counts={"00": i.shots}, method="matrix_product_state")
            for i in items
        ]

    worker = Worker(store, store, FakePool(mps), settings(), objects=objects)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        worker.start()
        try:
            await wait_until(all_terminal(store))
        finally:
            await worker.stop(grace=1.0)
    [line] = [entry for entry in logs if entry["event"] == "task_finished"]
    assert (line["task_id"], line["method"]) == (task.id, "matrix_product_state")
    document = orjson.loads(objects.objects["results/ab/m.json"])
    assert document["method"] == "matrix_product_state"
    assert document["backend"] == "fake_fez"
    assert line["backend"] == "fake_fez"
    assert document["result"] == {"00": 10}
