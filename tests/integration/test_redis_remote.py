"""The remote job records on a real redis-server: atomic leased claims shared by pollers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from qtask.adapters.redis_remote import RedisRemoteJobs
from qtask.domain.remote import RemoteJob
from servers import RedisServer


@pytest.fixture
async def jobs(redis_server: RedisServer) -> AsyncIterator[RedisRemoteJobs]:
    opened = RedisRemoteJobs(redis_server.url)
    yield opened
    await opened.close()


async def test_concurrent_pollers_claim_each_due_job_once_and_lapsed_claims_come_back(
    jobs: RedisRemoteJobs, redis_server: RedisServer
) -> None:
    for n in range(300):
        await jobs.record(RemoteJob(f"t{n}", "remote", f"job-{n}", 100.0, 100.0 + n % 50))
    other = RedisRemoteJobs(redis_server.url)
    try:
        claims = await asyncio.gather(
            *(store.claim_due(now=200.0, limit=40, lease_s=60.0) for store in [jobs, other] * 5)
        )
    finally:
        await other.close()
    claimed = [job.task_id for claim in claims for job in claim]
    assert len(claimed) == 300
    assert len(set(claimed)) == 300  # no job in two claims
    assert await jobs.claim_due(now=259.0, limit=1000, lease_s=60.0) == []
    again = await jobs.claim_due(now=261.0, limit=1000, lease_s=60.0)  # the claims lapsed
    assert len(again) == 300
    assert again[0].job_id.startswith("job-")


async def test_reschedule_keeps_the_poll_count_and_never_revives_a_forgotten_job(
    jobs: RedisRemoteJobs,
) -> None:
    await jobs.record(RemoteJob("a", "remote", "job-a", 100.0, 100.0))
    await jobs.record(RemoteJob("b", "remote", "job-b", 100.0, 100.0))
    first = {job.task_id: job for job in await jobs.claim_due(100.0, 10, 60.0)}
    await jobs.forget(["b"])
    await jobs.reschedule(
        [replace(first["a"], next_poll_at=105.0, polls=1), replace(first["b"], polls=1)]
    )
    [due] = await jobs.claim_due(now=106.0, limit=10, lease_s=60.0)
    assert (due.task_id, due.polls, due.next_poll_at) == ("a", 1, 105.0)
    later = await jobs.claim_due(now=1e12, limit=10, lease_s=60.0)
    assert [job.task_id for job in later] == ["a"]  # b stays forgotten


async def test_due_now_brings_a_job_forward_and_never_back(jobs: RedisRemoteJobs) -> None:
    await jobs.record(RemoteJob("a", "remote", "job-a", 100.0, 400.0))  # deep in its backoff
    await jobs.record(RemoteJob("b", "remote", "job-b", 100.0, 120.0))
    await jobs.due_now(["a", "b", "never-recorded"], now=150.0)
    assert [job.task_id for job in await jobs.claim_due(130.0, 10, 60.0)] == ["b"]  # still 120
    assert [job.task_id for job in await jobs.claim_due(150.0, 10, 60.0)] == ["a"]  # was 400
    await jobs.due_now(["a"], now=300.0)  # claimed until 210: a later time changes nothing
    assert await jobs.claim_due(now=189.0, limit=10, lease_s=60.0) == []
    await jobs.forget(["a"])
    await jobs.due_now(["a"], now=0.0)  # a forgotten job is not revived
    assert [job.task_id for job in await jobs.claim_due(1e12, 10, 60.0)] == ["b"]


async def test_a_reschedule_after_due_now_leaves_the_job_due(jobs: RedisRemoteJobs) -> None:
    """A pass reschedules only the jobs still claimed by it: a cancel's due_now stands."""
    await jobs.record(RemoteJob("a", "remote", "job-a", 100.0, 100.0))
    await jobs.record(RemoteJob("b", "remote", "job-b", 100.0, 100.0))
    claimed = {job.task_id: job for job in await jobs.claim_due(100.5, 10, 60.0)}
    await jobs.due_now(["a"], now=101.0)  # cancelled while the pass asked the provider
    later = [replace(job, next_poll_at=500.0, polls=1) for job in claimed.values()]
    await jobs.reschedule(later, claimed_until=100.5 + 60.0)
    assert [job.task_id for job in await jobs.claim_due(102.0, 10, 1000.0)] == ["a"]
    assert [job.task_id for job in await jobs.claim_due(500.0, 10, 60.0)] == ["b"]
