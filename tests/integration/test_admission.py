"""Admission on the real stores: the per-key pending cap holds exactly under concurrent
submissions, and a request retried with its Idempotency-Key gets its original task even at the
cap. The TaskService runs over SQLite, Redis and the in-memory store; nothing is published."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from qtask.application.service import Submission, TaskService
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings
from qtask.domain.ports import Delivery, TaskStore
from qtask.domain.task import Task
from qtask.errors import TooManyRequestsError
from qtask.execution.catalog import aer_only
from qtask_testkit import BELL

SUBMISSIONS, CAP = 40, 7


class _NoQueue:
    """Dispatch is not under test here: publishing does nothing."""

    async def publish(self, tasks: Sequence[Task]) -> None:
        return None

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        return []

    async def close(self) -> None:
        return None


def service_over(store: TaskStore, cap: int) -> TaskService:
    limits = LimitsSettings()
    ingestor = CircuitIngestor(limits, pool=None)
    return TaskService(
        store,
        _NoQueue(),
        ingestor,
        limits,
        max_pending_per_owner=cap,
        backends=aer_only(limits),
    )


def bell(count: int = 1) -> list[Submission]:
    return [Submission(BELL, 10)] * count


async def test_concurrent_submissions_at_a_cap_store_exactly_the_cap(store: TaskStore) -> None:
    service = service_over(store, CAP)
    answers = await asyncio.gather(
        *(service.submit(bell()[0], owner="alice") for _ in range(SUBMISSIONS)),
        return_exceptions=True,
    )
    accepted = [answer for answer in answers if isinstance(answer, Task)]
    refused = [answer for answer in answers if isinstance(answer, TooManyRequestsError)]
    assert (len(accepted), len(refused)) == (CAP, SUBMISSIONS - CAP)
    assert await store.pending_count("alice") == CAP
    assert [await store.get(task.id) for task in accepted] == accepted
    assert "may have at most 7" in str(refused[0])


async def test_concurrent_batches_at_a_cap_are_each_all_or_nothing(store: TaskStore) -> None:
    service = service_over(store, CAP)
    answers = await asyncio.gather(
        *(service.submit_many(bell(3), owner="alice") for _ in range(10)),
        return_exceptions=True,
    )
    accepted = [answer for answer in answers if isinstance(answer, list)]
    assert len(accepted) == CAP // 3  # two batches of three fit under seven; no partial third
    assert sum(isinstance(answer, TooManyRequestsError) for answer in answers) == 10 - CAP // 3
    assert await store.pending_count("alice") == 3 * (CAP // 3)
    # The place left is one task's: a single submission fits, a batch of two does not.
    await service.submit(bell()[0], owner="alice")
    with pytest.raises(TooManyRequestsError):
        await service.submit_many(bell(2), owner="alice")
    assert await store.pending_count("alice") == CAP


async def test_a_retry_at_the_cap_gets_its_original_task(store: TaskStore) -> None:
    service = service_over(store, 3)
    first = await service.submit(bell()[0], "order-1", owner="alice")
    batch = await service.submit_many(bell(2), "run-1", owner="alice")  # now at the cap
    with pytest.raises(TooManyRequestsError):
        await service.submit(bell()[0], "order-2", owner="alice")
    assert (await service.submit(bell()[0], "order-1", owner="alice")).id == first.id
    retried = await service.submit_many(bell(2), "run-1", owner="alice")
    assert [task.id for task in retried] == [task.id for task in batch]
    # Under concurrency too: every retry gets the original, and nothing new is stored.
    retries = await asyncio.gather(
        *(service.submit(bell()[0], "order-1", owner="alice") for _ in range(10))
    )
    assert {task.id for task in retries} == {first.id}
    assert await store.pending_count("alice") == 3
