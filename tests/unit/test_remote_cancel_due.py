"""A cancel of a remote task reaches its provider at the next poller pass (RemoteJobStore.due_now),
over in-memory fakes."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace

from qtask.application.poller import RemotePoller
from qtask.application.service import TaskService
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings
from qtask.domain.remote import RemoteJob, RemoteStatus
from qtask.domain.task import Status, Task, new_task_id
from qtask.execution.catalog import aer_only
from qtask.testing import FakeRemoteBackend, InMemoryRemoteJobs, InMemoryTaskStore
from qtask_testkit import BELL, BELL_INFO


async def _submitted(
    store: InMemoryTaskStore, jobs: InMemoryRemoteJobs, now: float
) -> tuple[Task, str]:
    """A remote task as a worker leaves it, its job deep in its backoff (next poll in 300 s)."""
    task = await store.create(
        Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=10, backend="remote")
    )
    await store.fetch(1, timeout=0)
    await jobs.record(RemoteJob(task.id, "remote", "job-0", now - 3600, now + 300, polls=9))
    return task, "job-0"


def _service(store: InMemoryTaskStore, jobs: InMemoryRemoteJobs) -> TaskService:
    limits = LimitsSettings()
    return TaskService(
        store,
        store,
        CircuitIngestor(limits, None),
        limits,
        remote_jobs=jobs,
        backends=aer_only(limits),
    )


async def test_a_cancel_makes_the_job_due_and_the_next_pass_cancels_it_at_the_provider() -> None:
    store, provider = InMemoryTaskStore(), FakeRemoteBackend()
    jobs = InMemoryRemoteJobs(store)
    now = time.time()  # the service stamps due_now with the wall clock
    task, job_id = await _submitted(store, jobs, now)
    assert await provider.submit(task) == job_id  # the provider has the job, queued
    await _service(store, jobs).cancel(task.id)
    assert jobs.jobs[task.id].next_poll_at <= time.time()  # due now, not in 300 s
    poller = RemotePoller(store, jobs, {"remote": provider}, clock=time.time)
    report = await poller.run_once()
    assert report.claimed == 1
    assert provider.cancelled == [job_id]
    assert provider.status_calls == 0
    assert jobs.jobs == {}
    assert store.tasks[task.id].status is Status.FAILED


class _CancelledMidCall(FakeRemoteBackend):
    """A provider whose status call is out while the task is cancelled here."""

    def __init__(self, cancel: object) -> None:
        super().__init__()
        self._cancel = cancel

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        answer = await super().statuses(job_ids)
        await self._cancel()  # type: ignore[operator]
        return answer


async def test_a_cancel_during_the_status_call_is_not_undone_by_the_reschedule() -> None:
    store = InMemoryTaskStore()
    jobs = InMemoryRemoteJobs(store)
    now = time.time()  # the service stamps due_now with the wall clock
    task, job_id = await _submitted(store, jobs, now)
    jobs.jobs[task.id] = replace(jobs.jobs[task.id], next_poll_at=now)  # due in this pass

    async def cancel() -> None:
        await _service(store, jobs).cancel(task.id)

    provider = _CancelledMidCall(cancel)
    await provider.submit(task)  # the provider has the job, still running
    poller = RemotePoller(store, jobs, {"remote": provider}, clock=time.time, rng=random.Random(0))
    assert (await poller.run_once()).status_calls == 1
    assert jobs.jobs[task.id].next_poll_at <= time.time()  # still due now, not rescheduled
    assert provider.cancelled == []
    await poller.run_once()  # the next tick
    assert provider.cancelled == [job_id]
    assert jobs.jobs == {}
