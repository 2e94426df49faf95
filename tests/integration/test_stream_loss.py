"""NATS loses its stream while Redis holds queued and running tasks: the reconciler notices and
publishes them again, and each then runs exactly once. Real nats-server and redis-server."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import nats
import pytest
from nats.js import JetStreamContext

from qtask.adapters.nats_queue import NatsTaskQueue
from qtask.adapters.redis_store import RedisTaskStore
from qtask.application.reconciler import Reconciler
from qtask.domain.task import Status, Task
from qtask.errors import QueueUnavailableError
from qtask_testkit import make_task
from servers import NatsServer, RedisServer

STREAM = "QTASK"


@dataclass
class Cluster:
    """What the roles would hold: the store, an API's queue and reconciler, a worker's queue."""

    store: RedisTaskStore
    api_queue: NatsTaskQueue
    worker_queue: NatsTaskQueue
    reconciler: Reconciler
    executed: Counter[str] = field(default_factory=Counter)


@pytest.fixture
async def cluster(redis_server: RedisServer, nats_server: NatsServer) -> AsyncIterator[Cluster]:
    store = RedisTaskStore(redis_server.url)
    api_queue = NatsTaskQueue(nats_server.url, store, worker_id="api")
    worker_queue = NatsTaskQueue(nats_server.url, store, worker_id="w-1", consumer_check_s=0.5)
    await api_queue.connect()
    await worker_queue.connect()
    reconciler = Reconciler(store, api_queue, interval=0.2)
    reconciler.start()
    yield Cluster(store, api_queue, worker_queue, reconciler)
    await reconciler.stop()
    await worker_queue.close()
    await api_queue.close()
    await store.close()


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """An operator's own connection to the server."""
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1)
    yield nc.jetstream()
    await nc.close()


async def until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)


async def submitted(cluster: Cluster, count: int) -> list[Task]:
    """Tasks stored and published as the API does, once the reconciler recorded the stream."""
    await cluster.reconciler.run_once()  # as the background passes do
    tasks = await cluster.store.create_many([make_task() for _ in range(count)])
    await cluster.api_queue.publish(tasks)
    return tasks


async def work(cluster: Cluster, tasks: list[Task], within: float) -> None:
    """Run the worker's loop until every task completed: an ended task is acknowledged without
    running, a running one is 'executed' (counted) and completed, as the real worker does."""
    wanted = {task.id for task in tasks}
    deadline = time.monotonic() + within
    while True:
        outcomes = await cluster.store.outcomes(sorted(wanted))
        if all(o.status is Status.COMPLETED for o in outcomes.values()):
            return
        statuses = Counter(o.status.value for o in outcomes.values())
        assert time.monotonic() < deadline, f"not completed within {within} s: {statuses}"
        try:
            deliveries = await cluster.worker_queue.fetch(10, timeout=0.3)
        except QueueUnavailableError:
            await asyncio.sleep(0.1)
            continue
        for delivery in deliveries:
            if not delivery.task.status.terminal:
                cluster.executed[delivery.task.id] += 1
                await cluster.store.complete(delivery.task.id, {"00": 1})
            await delivery.ack()


async def a_running_task_whose_worker_died(cluster: Cluster, nats_server: NatsServer) -> str:
    """Fetch one task with a worker that then vanishes without settling it."""
    dead = NatsTaskQueue(nats_server.url, cluster.store, worker_id="dead")
    await dead.connect()
    deliveries = await dead.fetch(1, timeout=2.0)
    assert len(deliveries) == 1
    assert deliveries[0].task.status is Status.RUNNING
    await dead.close()
    return deliveries[0].task.id


async def test_deleted_stream_every_queued_and_running_task_runs_once(
    cluster: Cluster, nats_server: NatsServer, js: JetStreamContext
) -> None:
    tasks = await submitted(cluster, 30)
    running = await a_running_task_whose_worker_died(cluster, nats_server)

    await js.delete_stream(STREAM)

    await work(cluster, tasks, within=30)
    assert cluster.executed == Counter({task.id: 1 for task in tasks})
    assert cluster.reconciler.losses == 1
    assert (await cluster.store.get(running)) is not None
    # Nothing is left to deliver, and later passes publish nothing more.
    republished = cluster.reconciler.republished
    await asyncio.sleep(1.0)  # five passes of the reconciler
    assert cluster.reconciler.republished == republished
    assert await cluster.worker_queue.fetch(10, timeout=0.5) == []


async def test_nats_restarted_on_empty_storage_every_task_runs_once(
    cluster: Cluster, nats_server: NatsServer
) -> None:
    tasks = await submitted(cluster, 30)
    await a_running_task_whose_worker_died(cluster, nats_server)

    nats_server.stop(signal.SIGKILL)
    shutil.rmtree(nats_server.dir / "jetstream")
    await asyncio.to_thread(nats_server.start)  # same port, no streams

    await work(cluster, tasks, within=30)
    assert cluster.executed == Counter({task.id: 1 for task in tasks})
    assert cluster.reconciler.losses == 1


async def test_a_poller_started_after_the_loss_republishes(
    redis_server: RedisServer, nats_server: NatsServer, js: JetStreamContext
) -> None:
    store = RedisTaskStore(redis_server.url)
    queue = NatsTaskQueue(nats_server.url, store, worker_id="api")
    await queue.connect()
    first = Reconciler(store, queue, interval=60.0)
    await first.run_once()
    tasks = await store.create_many([make_task() for _ in range(5)])
    await queue.publish(tasks)
    await queue.close()
    await js.delete_stream(STREAM)  # while no qtask process runs

    queue = NatsTaskQueue(nats_server.url, store, worker_id="poller")
    await queue.connect()  # creates the stream again
    try:
        restarted = Reconciler(store, queue, interval=60.0)
        assert await restarted.run_once() == 5
        assert (await js.stream_info(STREAM)).state.messages == 5
    finally:
        await queue.close()
        await store.close()


async def test_an_old_healthy_backlog_is_not_published_again(
    redis_server: RedisServer, nats_server: NatsServer, js: JetStreamContext
) -> None:
    store = RedisTaskStore(redis_server.url)
    # A duplicate window of 1 s: any second publish after it would be a second message.
    queue = NatsTaskQueue(nats_server.url, store, worker_id="api", duplicate_window=1.0)
    await queue.connect()
    try:
        reconciler = Reconciler(store, queue, interval=60.0)
        await reconciler.run_once()
        tasks = await store.create_many([make_task() for _ in range(10)])
        await queue.publish(tasks)
        before = (await js.stream_info(STREAM)).state
        await asyncio.sleep(1.5)  # the backlog is now older than the duplicate window

        for _ in range(3):
            assert await reconciler.run_once() == 0
        assert await Reconciler(store, queue, interval=60.0).run_once() == 0  # a restart
        after = (await js.stream_info(STREAM)).state
        assert (after.messages, after.last_seq) == (before.messages, before.last_seq) == (10, 10)
    finally:
        await queue.close()
        await store.close()
