"""The task lifecycle (qtask.domain.lifecycle) kept over the distributed queue: a real
nats-server and redis-server, the worker loop, and a pool that stands in for the child
processes (so a run can be held mid-task)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from qtask.adapters.nats_queue import NatsTaskQueue
from qtask.adapters.redis_store import RedisTaskStore
from qtask.config import WorkerSettings
from qtask.domain.task import Status
from qtask.execution.items import RunItem, RunOutcome
from qtask.runtime.pool import ChildCrashedError
from qtask.worker.runner import Worker
from qtask_testkit import make_task
from servers import NatsServer, RedisServer

SETTINGS = WorkerSettings(processes=1, max_attempts=3, task_timeout_s=30.0, batch_size=1)


class HeldPool:
    """A one-slot pool whose runs wait until it is closed (a worker stopped past its grace)
    and then fail as a killed child does; or, once `answer` is set, return counts."""

    size = 1

    def __init__(self, *, answer: bool = False) -> None:
        self.answer = answer
        self.started = asyncio.Event()
        self.closed = asyncio.Event()

    async def call(self, items: list[RunItem], timeout: float) -> list[RunOutcome]:
        self.started.set()
        if self.answer:
            return [RunOutcome(item.task_id, counts={"00": item.shots}) for item in items]
        await self.closed.wait()
        raise ChildCrashedError("the worker process died (killed by signal SIGKILL)")

    async def close(self) -> None:
        self.closed.set()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisTaskStore]:
    opened = RedisTaskStore(redis_server.url)
    yield opened
    await opened.close()


async def _queue(nats_server: NatsServer, store: RedisTaskStore, name: str) -> NatsTaskQueue:
    queue = NatsTaskQueue(nats_server.url, store, worker_id=name, max_deliver=-1)
    await queue.connect()
    return queue


async def _wait_for(store: RedisTaskStore, task_id: str, status: Status) -> None:
    deadline = time.monotonic() + 20.0
    while (task := await store.get(task_id)) is None or task.status is not status:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} not {status} in time: {task}")
        await asyncio.sleep(0.05)


async def test_a_worker_shut_down_mid_task_refunds_the_attempt_over_nats(
    nats_server: NatsServer, store: RedisTaskStore
) -> None:
    """The interrupted attempt is refunded in the store, and the redelivery (JetStream's second
    delivery of the message) runs as attempt 1 again, not 2."""
    task = await store.create(make_task())
    first_queue = await _queue(nats_server, store, "first")
    second_queue = await _queue(nats_server, store, "second")
    try:
        await first_queue.publish([task])
        held = HeldPool()
        first = Worker(store, first_queue, held, SETTINGS, worker_id="first")  # type: ignore[arg-type]
        first.start()
        await asyncio.wait_for(held.started.wait(), 10.0)
        running = await store.get(task.id)
        assert running is not None
        assert running.attempts == 1
        await first.stop(grace=0.1)  # past the grace: the run is interrupted, not failed
        requeued = await store.get(task.id)
        assert requeued is not None
        assert requeued.status is Status.QUEUED
        assert requeued.attempts == 0

        answering = HeldPool(answer=True)
        second = Worker(store, second_queue, answering, SETTINGS, worker_id="second")  # type: ignore[arg-type]
        second.start()
        try:
            await _wait_for(store, task.id, Status.COMPLETED)
        finally:
            await second.stop(grace=1.0)
        done = await store.get(task.id)
        assert done is not None
        assert done.attempts == 1
        assert done.completed_by == "second"
        assert done.completed_attempt == 1
    finally:
        await first_queue.close()
        await second_queue.close()
