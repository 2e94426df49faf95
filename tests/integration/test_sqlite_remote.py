"""The remote job records on a real SQLite file: claims, pinning, and a restart's recovery."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qtask.adapters.sqlite_remote import SQLiteRemoteJobs
from qtask.adapters.sqlite_store import SQLiteTaskStore
from qtask.domain.remote import RemoteJob
from qtask.domain.task import Status, Task, new_task_id
from qtask_testkit import BELL, BELL_INFO


async def _submitted(store: SQLiteTaskStore, jobs: SQLiteRemoteJobs, count: int) -> list[Task]:
    tasks = [
        Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=10, backend="remote")
        for _ in range(count)
    ]
    await store.create_many(tasks)
    deliveries = await store.fetch(count, timeout=0)
    for n, delivery in enumerate(deliveries):
        await jobs.record(RemoteJob(delivery.task.id, "remote", f"job-{n}", 100.0, 100.0 + n))
        await delivery.in_progress()  # a late heartbeat must not hand the task back
    return tasks


async def test_claims_are_leased_and_submitted_tasks_survive_a_restart(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "qtask.db")
    jobs = SQLiteRemoteJobs(store.db)
    try:
        tasks = await _submitted(store, jobs, 5)
        first = await jobs.claim_due(now=102.0, limit=10, lease_s=60.0)
        assert [job.job_id for job in first] == ["job-0", "job-1", "job-2"]
        assert await jobs.claim_due(now=102.0, limit=10, lease_s=60.0) == []  # claimed
        assert len(await jobs.claim_due(now=200.0, limit=10, lease_s=60.0)) == 5  # lapsed
        await jobs.reschedule([replace(first[0], next_poll_at=1e12, polls=3)])
        await store.complete(first[1].task_id, {"00": 10})  # as the poller ends a task
        await jobs.forget([first[1].task_id])
        # Pinned: no claim of the queue takes a submitted task, and a restart leaves it alone.
        assert await store.fetch(10, timeout=0) == []
        assert await store.recover() == 0
        statuses = [(await store.get(t.id)).status for t in tasks]  # type: ignore[union-attr]
        assert sorted(statuses) == [Status.COMPLETED] + [Status.RUNNING] * 4
    finally:
        await store.close()
    reopened = SQLiteTaskStore(tmp_path / "qtask.db")
    try:
        again = SQLiteRemoteJobs(reopened.db)
        due = await again.claim_due(now=1e11, limit=10, lease_s=60.0)
        assert sorted(job.job_id for job in due) == ["job-2", "job-3", "job-4"]
    finally:
        await reopened.close()


async def test_recover_makes_every_claimed_job_due_at_once(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "qtask.db")
    jobs = SQLiteRemoteJobs(store.db)
    try:
        await _submitted(store, jobs, 3)
        assert len(await jobs.claim_due(now=200.0, limit=10, lease_s=120.0)) == 3
        assert await jobs.claim_due(now=201.0, limit=10, lease_s=120.0) == []
        assert await jobs.recover(now=201.0) == 3
        assert len(await jobs.claim_due(now=201.0, limit=10, lease_s=120.0)) == 3
    finally:
        await store.close()


async def test_due_now_brings_a_job_forward_and_never_back(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "qtask.db")
    jobs = SQLiteRemoteJobs(store.db)
    try:
        tasks = await _submitted(store, jobs, 3)  # due at 100, 101, 102
        await jobs.reschedule(
            [RemoteJob(tasks[0].id, "remote", "job-0", 100.0, 400.0, polls=5)]
        )  # deep in its backoff
        await jobs.due_now([tasks[0].id, tasks[1].id, "no-such-task"], now=150.0)
        due = await jobs.claim_due(now=150.0, limit=10, lease_s=60.0)
        assert sorted(job.job_id for job in due) == ["job-0", "job-1", "job-2"]
        await jobs.due_now([tasks[2].id], now=300.0)  # claimed until 210: a later time changes
        assert await jobs.claim_due(now=209.0, limit=10, lease_s=60.0) == []  # nothing
    finally:
        await store.close()


async def test_a_reschedule_after_due_now_leaves_the_job_due(tmp_path: Path) -> None:
    """A pass reschedules only the jobs still claimed by it: a cancel's due_now stands."""
    store = SQLiteTaskStore(tmp_path / "qtask.db")
    jobs = SQLiteRemoteJobs(store.db)
    try:
        tasks = await _submitted(store, jobs, 2)  # due at 100, 101
        claimed = await jobs.claim_due(now=101.5, limit=10, lease_s=60.0)
        await jobs.due_now([tasks[0].id], now=102.0)  # cancelled while the pass asked
        later = [replace(job, next_poll_at=500.0, polls=1) for job in claimed]
        await jobs.reschedule(later, claimed_until=101.5 + 60.0)
        [due] = await jobs.claim_due(now=103.0, limit=10, lease_s=1000.0)
        assert due.task_id == tasks[0].id
        [rescheduled] = await jobs.claim_due(now=500.0, limit=10, lease_s=60.0)
        assert (rescheduled.task_id, rescheduled.polls) == (tasks[1].id, 1)
    finally:
        await store.close()
