"""Remote backends: provider states, the worker's submission, the poller's passes (in memory)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
import structlog.testing

from qtask.application.poller import RemotePoller
from qtask.config import WorkerSettings
from qtask.domain.object_keys import circuit_key, result_key
from qtask.domain.remote import (
    MAX_POLL_INTERVAL_S,
    RemoteJob,
    RemoteState,
    RemoteStatus,
    next_poll_delay,
    provider_state,
    remote_job_key,
)
from qtask.domain.task import Status, Task, new_task_id
from qtask.errors import RemoteRejectedError, RemoteUnavailableError
from qtask.testing import (
    FakeRemoteBackend,
    InMemoryObjectStore,
    InMemoryRemoteJobs,
    InMemoryTaskStore,
)
from qtask.worker.remote import RemoteSubmitter
from qtask.worker.runner import Worker
from qtask_testkit import BELL, BELL_INFO


class FakePool:
    """Stands in for ChildPool; a remote task must never reach it."""

    size = 1

    def __init__(self) -> None:
        self.calls: list[object] = []

    async def call(self, items: list[object], timeout: float) -> list[object]:
        self.calls.append(items)
        raise AssertionError("a remote task was sent to a child process")

    async def close(self) -> None:
        return None


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# --- provider states -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "state", "expected"),
    [
        ("qtask", "pending", RemoteState.RUNNING),
        ("qtask", "completed", RemoteState.DONE),
        ("qtask", "error", RemoteState.ERROR),
        ("ibm", "INITIALIZING", RemoteState.QUEUED),
        ("ibm", "QUEUED", RemoteState.QUEUED),
        ("ibm", "RUNNING", RemoteState.RUNNING),
        ("ibm", "DONE", RemoteState.DONE),
        ("ibm", "ERROR", RemoteState.ERROR),
        ("ibm", "CANCELLED", RemoteState.CANCELLED),
        ("braket", "CREATED", RemoteState.QUEUED),
        ("braket", "COMPLETED", RemoteState.DONE),
        ("braket", "FAILED", RemoteState.ERROR),
        ("braket", "CANCELLING", RemoteState.RUNNING),
        ("braket", "CANCELLED", RemoteState.CANCELLED),
        # Unknown: polled again (and timed out at worst), never ended on a guess.
        ("ibm", "SOMETHING_NEW", RemoteState.RUNNING),
    ],
)
def test_provider_state_maps_each_provider_state(
    provider: str, state: str, expected: RemoteState
) -> None:
    assert provider_state(provider, state) is expected


def test_poll_delay_doubles_per_poll_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    first = [next_poll_delay(2.0, 0, rng) for _ in range(200)]
    assert min(first) >= 1.5
    assert max(first) <= 2.5
    assert len(set(first)) > 100
    assert all(6.0 <= next_poll_delay(2.0, 2, rng) <= 10.0 for _ in range(50))
    assert all(next_poll_delay(2.0, 40, rng) <= MAX_POLL_INTERVAL_S * 1.25 for _ in range(50))


# --- the worker's submission -----------------------------------------------------------------


def remote_task(**changes: object) -> Task:
    task = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=10, backend="remote")
    return replace(task, **changes)  # type: ignore[arg-type]


def worker_settings() -> WorkerSettings:
    return WorkerSettings(processes=1, max_attempts=3, task_timeout_s=5.0, batch_size=8)


class FlakyJobs(InMemoryRemoteJobs):
    """Fails the first `failures` records: a worker dying between the provider's accept and
    the store of the job."""

    def __init__(self, store: InMemoryTaskStore, failures: int) -> None:
        super().__init__(store)
        self.failures = failures

    async def record(self, job: RemoteJob) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("killed before the job was stored")
        await super().record(job)


def remote_worker(
    store: InMemoryTaskStore, jobs: InMemoryRemoteJobs, provider: FakeRemoteBackend
) -> Worker:
    """A worker with no simulator slot in use, submitting to `provider` as "remote"."""
    return Worker(
        store,
        store,
        FakePool(),  # type: ignore[arg-type]
        worker_settings(),
        remote=RemoteSubmitter({"remote": provider}, jobs),
    )


async def test_remote_task_is_submitted_without_a_slot_and_acked_once_its_job_is_stored() -> None:
    store = InMemoryTaskStore()
    jobs = InMemoryRemoteJobs(store)
    provider = FakeRemoteBackend()
    task = await store.create(remote_task())
    pool = FakePool()
    worker = Worker(
        store,
        store,
        pool,  # type: ignore[arg-type]
        worker_settings(),
        remote=RemoteSubmitter({"remote": provider}, jobs),
    )
    worker.start()
    try:
        await wait_until(lambda: task.id in jobs.jobs and worker.in_flight == 0)
    finally:
        await worker.stop(grace=1.0)
    assert pool.calls == []  # no simulator slot, no child process
    assert jobs.jobs[task.id].job_id == provider.by_task[task.id]
    assert store.tasks[task.id].status is Status.RUNNING  # clients read "pending"
    assert await store.fetch(10, timeout=0) == []  # the poller's now, not the queue's


async def test_worker_killed_between_accept_and_store_resubmits_to_the_same_job() -> None:
    store = InMemoryTaskStore()
    jobs = FlakyJobs(store, failures=1)
    provider = FakeRemoteBackend()
    task = await store.create(remote_task())
    worker = remote_worker(store, jobs, provider)
    worker.start()
    try:
        await wait_until(lambda: provider.submit_calls == 1 and worker.in_flight == 0)
        assert task.id not in jobs.jobs
        store.expire_lease(task.id)  # the unacknowledged delivery's lease lapses
        await store.publish([])
        await wait_until(lambda: task.id in jobs.jobs)
    finally:
        await worker.stop(grace=1.0)
    assert provider.submit_calls == 2
    assert list(provider.by_task) == [task.id]  # one job at the provider
    assert jobs.jobs[task.id].job_id == provider.by_task[task.id]
    assert store.tasks[task.id].attempts == 2


async def test_remote_refusal_ends_the_task_with_the_providers_message() -> None:
    store = InMemoryTaskStore()
    jobs = InMemoryRemoteJobs(store)
    provider = FakeRemoteBackend()

    async def refuse(task: Task) -> str:
        raise RemoteRejectedError("The remote qtask refused the task: too many qubits")

    provider.submit = refuse  # type: ignore[method-assign]
    task = await store.create(remote_task())
    worker = remote_worker(store, jobs, provider)
    worker.start()
    try:
        await wait_until(lambda: store.tasks[task.id].status.terminal)
    finally:
        await worker.stop(grace=1.0)
    assert store.tasks[task.id].status is Status.FAILED
    assert store.tasks[task.id].error == "The remote qtask refused the task: too many qubits"
    assert jobs.jobs == {}


# --- the poller ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def submitted(
    store: InMemoryTaskStore,
    jobs: InMemoryRemoteJobs,
    provider: FakeRemoteBackend,
    clock: Clock,
    count: int = 1,
    **changes: object,
) -> list[Task]:
    """`count` remote tasks as a worker leaves them: running, submitted, their jobs stored."""
    tasks = await store.create_many([remote_task(**changes) for _ in range(count)])
    await store.fetch(count, timeout=0)
    for task in tasks:
        job_id = await provider.submit(task)
        await jobs.record(RemoteJob(task.id, "remote", job_id, clock.now, clock.now))
    return tasks


def poller_for(
    store: InMemoryTaskStore,
    jobs: InMemoryRemoteJobs,
    provider: FakeRemoteBackend,
    clock: Clock,
    objects: InMemoryObjectStore | None = None,
) -> RemotePoller:
    return RemotePoller(
        store, jobs, {"remote": provider}, objects, clock=clock, rng=random.Random(0)
    )


async def test_a_pass_over_10000_outstanding_jobs_makes_at_most_40_status_calls() -> None:
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend()
    jobs = InMemoryRemoteJobs(store)
    await submitted(store, jobs, provider, clock, count=10_000)
    report = await poller_for(store, jobs, provider, clock).run_once()
    assert report.claimed == 10_000
    assert provider.status_calls == report.status_calls == 40  # ceil(10,000 / 256)
    assert report.rescheduled == 10_000
    assert all(job.polls == 1 and job.next_poll_at > clock.now for job in jobs.jobs.values())


async def test_done_job_completes_the_task_once_and_moves_it_from_pending_to_results() -> None:
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend()
    jobs, objects = InMemoryRemoteJobs(store), InMemoryObjectStore()
    [task] = await submitted(
        store, jobs, provider, clock, result_object="results/ab/x.json", seed=5
    )
    await objects.put(remote_job_key(task.id), b"{}")
    provider.finish(provider.by_task[task.id], {"00": 6, "11": 4})
    poller = poller_for(store, jobs, provider, clock, objects)
    with structlog.testing.capture_logs() as logs:
        report = await poller.run_once()
    assert report.completed == 1
    done = store.tasks[task.id]
    assert (done.status, done.result) == (Status.COMPLETED, {"00": 6, "11": 4})
    document = orjson.loads(await objects.get("results/ab/x.json") or b"")
    assert document["result"] == {"00": 6, "11": 4}
    assert document["remote_job"] == provider.by_task[task.id]
    assert await objects.get(remote_job_key(task.id)) is None
    assert jobs.jobs == {}
    clock.now += 3600
    assert (await poller.run_once()).claimed == 0
    assert provider.status_calls == 1  # a stored result is never fetched again
    assert [e["task_id"] for e in logs if e["event"] == "task_finished"] == [task.id]


async def test_a_done_job_moves_from_the_pending_to_the_completed_area() -> None:
    """The seed's move: the result document (with the circuit) under completed/, then the
    pending circuit and job record deleted."""
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend()
    jobs, objects = InMemoryRemoteJobs(store), InMemoryObjectStore()
    task_id = new_task_id()
    [task] = await submitted(
        store,
        jobs,
        provider,
        clock,
        id=task_id,
        circuit_object=circuit_key(task_id),
        result_object=result_key(task_id),
    )
    await objects.put(circuit_key(task.id), BELL.encode())
    await objects.put(remote_job_key(task.id), b"{}")
    assert sorted(objects.objects) == [
        f"pending/{task_id[:2]}/{task_id}.job.json",
        f"pending/{task_id[:2]}/{task_id}.qasm",
    ]
    provider.finish(provider.by_task[task.id], {"00": 6, "11": 4})
    assert (await poller_for(store, jobs, provider, clock, objects).run_once()).completed == 1
    assert list(objects.objects) == [f"completed/{task_id[:2]}/{task_id}.json"]
    document = orjson.loads(objects.objects[result_key(task_id)])
    assert document["result"] == {"00": 6, "11": 4}
    assert document["circuit"] == BELL
    assert store.tasks[task.id].status is Status.COMPLETED


async def test_pass_killed_after_completing_cleans_up_without_fetching_again() -> None:
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend()
    jobs, objects = InMemoryRemoteJobs(store), InMemoryObjectStore()
    task_id = new_task_id()
    [task] = await submitted(
        store, jobs, provider, clock, id=task_id, circuit_object=circuit_key(task_id)
    )
    await objects.put(circuit_key(task.id), BELL.encode())
    await objects.put(remote_job_key(task.id), b"{}")
    await objects.put(result_key(task.id), b'{"result": {"00": 10}}')
    # The result was written and the task completed, then the poller died before it deleted
    # the pending objects (the move's last step).
    await store.complete(task.id, {"00": 10})
    report = await poller_for(store, jobs, provider, clock, objects).run_once()
    assert report.claimed == 1
    assert provider.status_calls == 0
    assert provider.cancelled == []
    assert await objects.get(remote_job_key(task.id)) is None
    assert await objects.get(circuit_key(task.id)) is None
    assert list(objects.objects) == [result_key(task.id)]
    assert jobs.jobs == {}


async def test_provider_error_ends_the_task_with_the_providers_message() -> None:
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend()
    jobs = InMemoryRemoteJobs(store)
    [task] = await submitted(store, jobs, provider, clock)
    provider.jobs[provider.by_task[task.id]] = RemoteStatus(
        RemoteState.ERROR, message="The remote qtask: calibration failed"
    )
    await poller_for(store, jobs, provider, clock).run_once()
    failed = store.tasks[task.id]
    assert (failed.status, failed.error) == (Status.FAILED, "The remote qtask: calibration failed")
    assert jobs.jobs == {}


async def test_job_unfinished_past_remote_timeout_is_cancelled_there_and_fails_here() -> None:
    store, clock = InMemoryTaskStore(), Clock()
    provider = FakeRemoteBackend(remote_timeout_s=60.0)
    jobs = InMemoryRemoteJobs(store)
    [task] = await submitted(store, jobs, provider, clock)
    poller = poller_for(store, jobs, provider, clock)
    await poller.run_once()
    assert store.tasks[task.id].status is Status.RUNNING
    clock.now += 61
    await poller.run_once()
    assert provider.cancelled == [provider.by_task[task.id]]
    failed = store.tasks[task.id]
    assert failed.status is Status.FAILED
    assert "within its remote_timeout_s of 60 s" in (failed.error or "")


async def test_unreachable_provider_is_polled_again_later_with_backoff() -> None:
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend(poll_interval_s=2.0)
    jobs = InMemoryRemoteJobs(store)
    [task] = await submitted(store, jobs, provider, clock)
    provider.down = True
    poller = poller_for(store, jobs, provider, clock)
    await poller.run_once()
    first = jobs.jobs[task.id].next_poll_at - clock.now
    clock.now = jobs.jobs[task.id].next_poll_at
    await poller.run_once()
    second = jobs.jobs[task.id].next_poll_at - clock.now
    assert 1.5 <= first <= 2.5
    assert 3.0 <= second <= 5.0
    assert store.tasks[task.id].status is Status.RUNNING


async def test_task_cancelled_here_is_cancelled_at_the_provider_and_forgotten() -> None:
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend()
    jobs = InMemoryRemoteJobs(store)
    [task] = await submitted(store, jobs, provider, clock)
    await store.cancel(task.id, "Task was cancelled.")
    await poller_for(store, jobs, provider, clock).run_once()
    assert provider.cancelled == [provider.by_task[task.id]]
    assert jobs.jobs == {}
    assert store.tasks[task.id].error == "Task was cancelled."


async def test_two_pollers_at_once_complete_each_task_exactly_once() -> None:
    store, clock, provider = InMemoryTaskStore(), Clock(), FakeRemoteBackend(status_batch=10)
    jobs = InMemoryRemoteJobs(store)
    tasks = await submitted(store, jobs, provider, clock, count=100)
    for task in tasks:
        provider.finish(provider.by_task[task.id], {"0": 10})
    first = poller_for(store, jobs, provider, clock)
    second = poller_for(store, jobs, provider, clock)
    reports = await asyncio.gather(first.run_once(), second.run_once(), first.run_once())
    assert sum(report.claimed for report in reports) == 100
    assert sum(report.completed for report in reports) == 100
    assert all(store.tasks[task.id].status is Status.COMPLETED for task in tasks)


class FlakyProvider(FakeRemoteBackend):
    """Unreachable for the first `outages` submissions."""

    def __init__(self, outages: int, **options: float) -> None:
        super().__init__(**options)
        self.outages = outages

    async def submit(self, task: Task) -> str:
        if self.outages:
            self.outages -= 1
            self.submit_calls += 1
            raise RemoteUnavailableError("the fake provider is down")
        return await super().submit(task)


async def run_submission(provider: FakeRemoteBackend, store: InMemoryTaskStore) -> Task:
    jobs = InMemoryRemoteJobs(store)
    task = await store.create(remote_task())
    worker = remote_worker(store, jobs, provider)
    worker.start()
    try:
        await wait_until(lambda: task.id in jobs.jobs or store.tasks[task.id].status.terminal)
    finally:
        await worker.stop(grace=1.0)
    return store.tasks[task.id]


async def test_unreachable_provider_at_submit_is_retried_with_backoff_in_the_same_attempt() -> None:
    store = InMemoryTaskStore()
    provider = FlakyProvider(outages=2, poll_interval_s=0.01)
    task = await run_submission(provider, store)
    assert provider.submit_calls == 3
    assert task.status is Status.RUNNING
    assert task.attempts == 1  # waiting on the provider spends no attempt
    assert list(provider.by_task) == [task.id]


async def test_provider_unreachable_past_remote_timeout_at_submit_ends_the_task_saying_so() -> None:
    store = InMemoryTaskStore()
    provider = FlakyProvider(outages=1000, poll_interval_s=0.01, remote_timeout_s=0.1)
    task = await run_submission(provider, store)
    assert task.status is Status.FAILED
    assert task.error is not None
    assert task.error.startswith(
        "The remote backend remote could not be reached within its remote_timeout_s of 0.1 s"
    )
    assert 2 <= provider.submit_calls <= 6  # backing off: 0.01, 0.02, 0.04 ...


async def test_shutdown_while_waiting_on_the_provider_requeues_with_the_attempt_refunded() -> None:
    store = InMemoryTaskStore()
    provider = FlakyProvider(outages=1000, poll_interval_s=30.0)
    task = await store.create(remote_task())
    worker = Worker(
        store,
        store,
        FakePool(),  # type: ignore[arg-type]
        worker_settings(),
        remote=RemoteSubmitter({"remote": provider}, InMemoryRemoteJobs(store)),
    )
    worker.start()
    await wait_until(lambda: provider.submit_calls == 1)
    await worker.stop(grace=10.0)
    stored = store.tasks[task.id]
    assert (stored.status, stored.attempts) == (Status.QUEUED, 0)


class CancelledWhileRecording(InMemoryRemoteJobs):
    """A cancel arrives while the worker records the job: the service's due_now finds no job."""

    async def record(self, job: RemoteJob) -> None:
        await self._store.cancel(job.task_id, "Task was cancelled.")
        await self.due_now([job.task_id], time.time())  # what the cancel does: nothing yet
        await super().record(job)


async def test_a_cancel_while_the_job_is_recorded_still_makes_the_job_due_at_once() -> None:
    store = InMemoryTaskStore()
    jobs = CancelledWhileRecording(store)
    provider = FakeRemoteBackend(poll_interval_s=120.0)
    task = await store.create(remote_task())
    worker = remote_worker(store, jobs, provider)
    worker.start()
    try:
        await wait_until(lambda: task.id in jobs.jobs and worker.in_flight == 0)
    finally:
        await worker.stop(grace=1.0)
    assert store.tasks[task.id].status is Status.FAILED
    # Due now, so the poller's next pass cancels it at the provider (not in 120 s).
    assert jobs.jobs[task.id].next_poll_at <= time.time()
