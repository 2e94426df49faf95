"""The NATS JetStream task queue against a real nats-server, with the in-memory store."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from qtask.adapters.nats_queue import NatsDelivery, NatsTaskQueue
from qtask.domain.ports import Delivery
from qtask.domain.task import Status, Task, new_task_id
from qtask.errors import ConfigError, QueueUnavailableError
from qtask.testing import InMemoryTaskStore
from qtask_testkit import BELL, BELL_INFO, free_port
from servers import NatsServer

INFO = BELL_INFO
STREAM = "QTASK"
SUBJECT = "qtask.tasks"

QueueFactory = Callable[..., Awaitable[NatsTaskQueue]]


@pytest.fixture
def store() -> InMemoryTaskStore:
    memory = InMemoryTaskStore()
    memory.tracks_publishing = True
    return memory


@pytest.fixture
async def make_queue(
    nats_server: NatsServer, store: InMemoryTaskStore
) -> AsyncIterator[QueueFactory]:
    """Connected queues on the test's server; each is closed at the end of the test."""
    opened: list[NatsTaskQueue] = []

    async def make(**options: Any) -> NatsTaskQueue:
        options.setdefault("worker_id", f"worker-{len(opened)}")
        queue = NatsTaskQueue(nats_server.url, options.pop("store", store), **options)
        await queue.connect()
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        await queue.close()


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A separate connection to inspect and poke the server, as an operator would."""
    nc: Client = await nats.connect(nats_server.url, max_reconnect_attempts=-1)
    yield nc.jetstream()
    await nc.close()


async def new_tasks(store: InMemoryTaskStore, count: int) -> list[Task]:
    return [
        await store.create(Task(id=new_task_id(), source=BELL, info=INFO, shots=100))
        for _ in range(count)
    ]


async def stream_messages(js: JetStreamContext) -> int:
    return (await js.stream_info(STREAM)).state.messages


async def fetch_until(
    queue: NatsTaskQueue, count: int, within: float = 10.0, batch: int = 10
) -> list[Delivery]:
    """Fetch until `count` deliveries arrived or `within` seconds passed."""
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(deliveries) < count and time.monotonic() < deadline:
        deliveries += await queue.fetch(batch, timeout=0.5)
    return deliveries


def ids(deliveries: list[Delivery]) -> list[str]:
    return [delivery.task.id for delivery in deliveries]


# --- publish and fetch -------------------------------------------------------------------------


async def test_publish_then_fetch_starts_the_task(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    queue = await make_queue(worker_id="w-1")
    [task] = await new_tasks(store, 1)
    assert [t.id for t in await store.unpublished(time.time() + 1, 10)] == [task.id]

    await queue.publish([task])
    assert await store.unpublished(time.time() + 1, 10) == []
    assert await queue.pending() == 1

    [delivery] = await queue.fetch(5, timeout=1.0)
    assert isinstance(delivery, NatsDelivery)
    assert delivery.task.id == task.id
    assert delivery.task.attempts == 1
    assert delivery.task.status is Status.RUNNING
    assert store.tasks[task.id].status is Status.RUNNING
    assert store.tasks[task.id].attempts == 1
    assert delivery.message.data == task.id.encode()
    assert delivery.message.headers == {"Nats-Msg-Id": task.id}
    assert await queue.pending() == 0

    await delivery.ack()
    assert await stream_messages(js) == 0  # work queue: an acknowledged message is deleted


async def test_fetch_on_empty_queue_waits_and_returns_nothing(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    began = time.monotonic()
    assert await queue.fetch(4, timeout=0.3) == []
    assert 0.2 < time.monotonic() - began < 1.5
    assert await queue.fetch(4, timeout=0) == []
    assert await queue.fetch(0, timeout=1.0) == []


async def test_fetch_returns_at_most_max_tasks(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    queue = await make_queue()
    tasks = await new_tasks(store, 5)
    await queue.publish(tasks)
    first = await queue.fetch(3, timeout=1.0)
    assert len(first) == 3
    rest = await fetch_until(queue, 2, within=3.0)
    assert sorted(ids(first) + ids(rest)) == sorted(t.id for t in tasks)


async def test_publishing_the_same_task_twice_gives_one_message(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    queue = await make_queue()
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    await queue.publish([task])
    await queue.publish([task, task])
    assert await stream_messages(js) == 1
    deliveries = await queue.fetch(10, timeout=0.5)
    assert ids(deliveries) == [task.id]
    assert await queue.fetch(10, timeout=0.3) == []


async def test_two_workers_split_the_tasks_without_overlap(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    publisher = await make_queue(worker_id="api")
    workers = [await make_queue(worker_id=f"w-{n}") for n in range(2)]
    tasks = await new_tasks(store, 20)
    await publisher.publish(tasks)
    seen: dict[str, list[str]] = {w.worker_id: [] for w in workers}

    async def work(queue: NatsTaskQueue) -> None:
        deadline = time.monotonic() + 10
        while sum(map(len, seen.values())) < 20 and time.monotonic() < deadline:
            for delivery in await queue.fetch(3, timeout=0.3):
                seen[queue.worker_id].append(delivery.task.id)
                await asyncio.sleep(0.01)  # a little work, so both workers get a share
                await delivery.ack()

    await asyncio.gather(*(work(w) for w in workers))
    first, second = seen.values()
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(t.id for t in tasks)
    assert first
    assert second
    assert await stream_messages(js) == 0


# --- settling: nak, lapsed ack_wait, in_progress, max_deliver, ack ------------------------------


async def test_nak_redelivers_at_once_as_the_next_attempt(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    queue = await make_queue()
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    [first] = await queue.fetch(1, timeout=1.0)
    await first.nak()
    began = time.monotonic()
    [second] = await queue.fetch(1, timeout=2.0)
    assert time.monotonic() - began < 1.0
    assert second.task.id == task.id
    assert second.task.attempts == 2
    assert store.tasks[task.id].attempts == 2


async def test_one_fetch_takes_a_batch_of_waiting_tasks_new_or_redelivered(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    # A fetch pulls one message, then as many as its metadata says wait behind it; JetStream
    # does not count redeliveries there, so after a redelivery it pulls a batch anyway.
    queue = await make_queue()
    tasks = await new_tasks(store, 5)
    await queue.publish(tasks)
    first = await queue.fetch(64, timeout=1.0)
    assert sorted(ids(first)) == sorted(task.id for task in tasks)
    for delivery in first:
        await delivery.nak()
    again = await queue.fetch(64, timeout=1.0)
    assert sorted(ids(again)) == sorted(task.id for task in tasks)
    assert {delivery.task.attempts for delivery in again} == {2}


async def test_a_refunded_release_is_not_counted_by_the_redelivery(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    """JetStream counts deliveries, the store counts attempts: a shutdown's refund survives."""
    queue = await make_queue()
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    [first] = await queue.fetch(1, timeout=1.0)
    await store.release(task.id, None, penalize=False)
    await first.nak()
    [second] = await queue.fetch(1, timeout=2.0)
    assert isinstance(second, NatsDelivery)
    assert second.message.metadata.num_delivered == 2
    assert second.task.attempts == 1
    assert store.tasks[task.id].attempts == 1


async def test_unacknowledged_message_is_redelivered_after_ack_wait(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    queue = await make_queue(ack_wait=1.0)
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    [first] = await queue.fetch(1, timeout=1.0)
    assert first.task.attempts == 1
    assert await queue.fetch(1, timeout=0.4) == []  # still held by the first delivery
    [second] = await queue.fetch(1, timeout=2.0)
    assert second.task.id == task.id
    assert second.task.attempts == 2


async def test_in_progress_keeps_the_message_from_other_workers(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    holder = await make_queue(ack_wait=1.0, worker_id="holder")
    other = await make_queue(ack_wait=1.0, worker_id="other")
    [task] = await new_tasks(store, 1)
    await holder.publish([task])
    [delivery] = await holder.fetch(1, timeout=1.0)

    async def keep_alive() -> None:
        for _ in range(6):  # 2.4 s, more than twice ack_wait
            await asyncio.sleep(0.4)
            await delivery.in_progress()

    alive = asyncio.create_task(keep_alive())
    stolen = await other.fetch(1, timeout=2.5)
    await alive
    assert stolen == []
    # Once the heartbeats stop, ack_wait lapses and another worker gets it.
    [redelivered] = await other.fetch(1, timeout=2.5)
    assert redelivered.task.id == task.id
    assert redelivered.task.attempts == 2


async def test_no_delivery_after_max_deliver(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    queue = await make_queue(max_deliver=4)
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    attempts = []
    for _ in range(4):
        [delivery] = await queue.fetch(1, timeout=1.0)
        attempts.append(delivery.task.attempts)
        await delivery.nak()
    assert attempts == [1, 2, 3, 4]
    assert await queue.fetch(1, timeout=0.5) == []
    assert store.tasks[task.id].attempts == 4
    # JetStream keeps the message (work queue: only an ack deletes it) but hands it out no more.
    assert await stream_messages(js) == 1


async def test_acknowledged_message_is_never_redelivered(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    queue = await make_queue(ack_wait=1.0)
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    [delivery] = await queue.fetch(1, timeout=1.0)
    await delivery.ack()
    assert await stream_messages(js) == 0
    assert await queue.fetch(1, timeout=1.5) == []  # longer than ack_wait
    consumer = await js.consumer_info(STREAM, "workers")
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0


async def test_message_naming_no_task_is_terminated(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    queue = await make_queue(ack_wait=1.0)
    [task] = await new_tasks(store, 1)
    await js.publish(SUBJECT, b"no-such-task")
    await queue.publish([task])
    deliveries = await fetch_until(queue, 1, within=3.0)
    assert ids(deliveries) == [task.id]
    await deliveries[0].ack()
    assert await queue.fetch(5, timeout=1.5) == []  # not redelivered after ack_wait either
    consumer = await js.consumer_info(STREAM, "workers")
    assert consumer.num_ack_pending == 0


async def test_terminal_task_is_handed_out_for_the_worker_to_ack(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    # A redelivery of a task that already ended: the store leaves it as is and the worker acks.
    queue = await make_queue()
    [task] = await new_tasks(store, 1)
    await store.complete(task.id, {"00": 100})
    await queue.publish([task])
    [delivery] = await queue.fetch(1, timeout=1.0)
    assert delivery.task.status is Status.COMPLETED
    await delivery.ack()


async def test_store_failure_leaves_the_message_for_redelivery(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    class FlakyStore(InMemoryTaskStore):
        fail = True

        async def start(self, task_id: str, worker_id: str) -> Task | None:
            if self.fail:
                raise RuntimeError("store down")
            return await super().start(task_id, worker_id)

    flaky = FlakyStore()
    flaky.tasks = store.tasks
    queue = await make_queue(store=flaky, ack_wait=1.0)
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    with pytest.raises(RuntimeError, match="store down"):
        await queue.fetch(2, timeout=1.0)
    flaky.fail = False
    assert await queue.fetch(1, timeout=0.3) == []  # not naked: it waits for ack_wait
    [delivery] = await queue.fetch(1, timeout=2.0)
    assert delivery.task.id == task.id
    # JetStream's second delivery, but the store never started the first: attempt 1.
    assert delivery.task.attempts == 1


async def test_close_hands_back_messages_that_arrived_after_a_fetch_gave_up(
    make_queue: QueueFactory, store: InMemoryTaskStore
) -> None:
    quitter = await make_queue(worker_id="quitter")
    other = await make_queue(worker_id="other")  # ack_wait stays 30 s
    # A fetch cancelled mid-wait leaves its pull request on the server...
    waiting = asyncio.create_task(quitter.fetch(1, timeout=5.0))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # ...so this message lands in the quitter's buffer; close() must nak it.
    [task] = await new_tasks(store, 1)
    await other.publish([task])
    await asyncio.sleep(0.3)
    await quitter.close()
    [delivery] = await other.fetch(1, timeout=2.0)
    assert delivery.task.id == task.id
    assert isinstance(delivery, NatsDelivery)
    assert delivery.message.metadata.num_delivered == 2
    assert delivery.task.attempts == 1  # the buffered delivery never started the task


# --- set-up ------------------------------------------------------------------------------------


async def test_stream_and_consumer_are_created_and_updated_idempotently(
    make_queue: QueueFactory, js: JetStreamContext
) -> None:
    await make_queue()
    await make_queue()  # a second replica with the same settings changes nothing
    info = await js.stream_info(STREAM)
    assert info.config.retention == RetentionPolicy.WORK_QUEUE
    assert info.config.storage == StorageType.FILE
    assert info.config.subjects == [SUBJECT]
    assert info.config.duplicate_window == pytest.approx(120.0)
    consumer = await js.consumer_info(STREAM, "workers")
    assert consumer.config.ack_wait == pytest.approx(30.0)
    assert consumer.config.max_deliver == 4
    assert consumer.config.max_ack_pending == 10_000
    assert consumer.config.deliver_subject is None  # a pull consumer

    await make_queue(ack_wait=5.0, max_deliver=6, duplicate_window=60.0)
    consumer = await js.consumer_info(STREAM, "workers")
    assert consumer.config.ack_wait == pytest.approx(5.0)
    assert consumer.config.max_deliver == 6
    info = await js.stream_info(STREAM)
    assert info.config.duplicate_window == pytest.approx(60.0)
    assert len(await js.streams_info()) == 1


async def test_replicas_connecting_at_once_agree(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    queues = await asyncio.gather(*(make_queue(worker_id=f"r-{n}") for n in range(5)))
    [task] = await new_tasks(store, 1)
    await queues[0].publish([task])
    assert ids(await queues[4].fetch(1, timeout=1.0)) == [task.id]
    assert (await js.stream_info(STREAM)).state.consumer_count == 1


async def test_existing_stream_with_other_retention_is_a_config_error(
    nats_server: NatsServer, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))  # limits retention
    queue = NatsTaskQueue(nats_server.url, store)
    with pytest.raises(ConfigError, match="workqueue"):
        await queue.connect()
    await js.delete_stream(STREAM)
    await queue.connect()  # the failed attempt left nothing behind: it can be tried again
    assert (await js.stream_info(STREAM)).config.retention == RetentionPolicy.WORK_QUEUE
    await queue.close()


async def test_deleted_consumer_is_recreated_by_the_next_fetch(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    queue = await make_queue(consumer_check_s=0.5)
    [first, second] = await new_tasks(store, 2)
    await queue.publish([first])
    [delivery] = await queue.fetch(1, timeout=1.0)
    await delivery.ack()
    await js.delete_consumer(STREAM, "workers")
    await queue.publish([second])
    deliveries = await fetch_until(queue, 1, within=5.0)
    assert ids(deliveries) == [second.id]


# --- stream identity and loss ------------------------------------------------------------------


async def test_stream_state_is_kept_across_a_restart_and_changes_with_a_new_stream(
    make_queue: QueueFactory,
    store: InMemoryTaskStore,
    nats_server: NatsServer,
    js: JetStreamContext,
) -> None:
    queue = await make_queue()
    first = await queue.stream_state()
    assert first.last_seq == 0
    await queue.publish(await new_tasks(store, 3))
    assert await queue.stream_state() == replace(first, last_seq=3)

    await asyncio.to_thread(nats_server.restart, signal.SIGKILL)  # storage kept
    deadline = time.monotonic() + 10
    while True:
        try:
            assert await queue.stream_state() == replace(first, last_seq=3)
            break
        except QueueUnavailableError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

    await js.delete_stream(STREAM)
    again = await queue.stream_state()  # a missing stream is created, with its consumer
    assert again.identity != first.identity
    assert again.last_seq == 0
    assert (await js.consumer_info(STREAM, "workers")).config.durable_name == "workers"


async def test_the_queue_reports_a_stream_it_finds_gone(
    make_queue: QueueFactory, store: InMemoryTaskStore, js: JetStreamContext
) -> None:
    noticed: list[str] = []
    queue = await make_queue(consumer_check_s=0.2)
    queue.on_stream_lost(lambda: noticed.append("lost"))
    [before, after] = await new_tasks(store, 2)
    await queue.publish([before])
    assert noticed == []

    await js.delete_stream(STREAM)
    with pytest.raises(QueueUnavailableError):
        await queue.publish([after])  # no stream: reported, and made again on the next use
    assert noticed == ["lost"]
    await queue.publish([after])
    assert noticed == ["lost", "lost"]  # the stream it created: a new one
    assert ids(await fetch_until(queue, 1, within=5.0)) == [after.id]


async def test_a_fetch_that_finds_the_consumer_gone_reports_it(
    make_queue: QueueFactory, js: JetStreamContext
) -> None:
    noticed: list[str] = []
    queue = await make_queue(consumer_check_s=0.2)
    queue.on_stream_lost(lambda: noticed.append("lost"))
    assert await queue.fetch(1, timeout=0.3) == []
    await js.delete_stream(STREAM)
    deadline = time.monotonic() + 5
    while not noticed:
        assert time.monotonic() < deadline
        assert await queue.fetch(1, timeout=0.3) == []
    assert noticed[0] == "lost"


# --- NATS unavailable ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_messages_survive_a_nats_restart(
    sig: signal.Signals,
    make_queue: QueueFactory,
    store: InMemoryTaskStore,
    nats_server: NatsServer,
) -> None:
    queue = await make_queue()
    tasks = await new_tasks(store, 50)
    await queue.publish(tasks)
    [held] = await queue.fetch(1, timeout=1.0)  # fetched before the restart, never acked

    await asyncio.to_thread(nats_server.restart, sig)

    deliveries = await fetch_until(queue, 49, within=15.0)
    assert sorted(ids(deliveries)) == sorted(t.id for t in tasks if t.id != held.task.id)
    for delivery in deliveries:
        await delivery.ack()
    await held.nak()  # the consumer's state survived too: the held message comes back
    [again] = await fetch_until(queue, 1, within=5.0)
    assert again.task.id == held.task.id
    assert again.task.attempts == 2
    await again.ack()
    assert await queue.pending() == 0
    await queue.ping()


async def test_server_that_lost_its_storage_gets_stream_and_consumer_again(
    make_queue: QueueFactory, store: InMemoryTaskStore, nats_server: NatsServer
) -> None:
    queue = await make_queue()
    [before, after] = await new_tasks(store, 2)
    await queue.publish([before])
    nats_server.stop(signal.SIGKILL)
    shutil.rmtree(nats_server.dir / "jetstream")
    await asyncio.to_thread(nats_server.start)
    deadline = time.monotonic() + 10
    while True:  # publishing again re-creates the stream once reconnected
        try:
            await queue.publish([after])
            break
        except QueueUnavailableError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    deliveries = await fetch_until(queue, 1, within=5.0)
    assert ids(deliveries) == [after.id]  # `before` went with the storage


async def test_publish_while_nats_is_down_fails_fast_then_recovers(
    make_queue: QueueFactory, store: InMemoryTaskStore, nats_server: NatsServer
) -> None:
    queue = await make_queue()
    await queue.ping()
    [lost, later] = await new_tasks(store, 2)
    nats_server.stop()

    began = time.monotonic()
    with pytest.raises(QueueUnavailableError, match="not published"):
        await queue.publish([lost])
    assert time.monotonic() - began < 3.0
    assert [t.id for t in await store.unpublished(time.time() + 1, 10)] == [lost.id, later.id]
    with pytest.raises(QueueUnavailableError):
        await queue.ping()
    with pytest.raises(QueueUnavailableError):
        await queue.pending()
    began = time.monotonic()
    with pytest.raises(QueueUnavailableError, match="disconnected"):
        await queue.stream_state()  # the reconciler's check fails at once too
    assert time.monotonic() - began < 1.5  # not after the 2 s request timeout

    await asyncio.to_thread(nats_server.start)
    deadline = time.monotonic() + 10
    while True:  # the reconciler's job: publish what the store says is unpublished
        try:
            await queue.publish(await store.unpublished(time.time() + 1, 10))
            break
        except QueueUnavailableError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    await queue.ping()
    assert await store.unpublished(time.time() + 1, 10) == []
    deliveries = await fetch_until(queue, 2, within=5.0)
    # Each task once: the failed publish left no stray copy behind.
    assert sorted(ids(deliveries)) == sorted([lost.id, later.id])
    assert await queue.fetch(5, timeout=0.5) == []


async def test_settling_while_nats_is_down_raises_queue_unavailable(
    make_queue: QueueFactory, store: InMemoryTaskStore, nats_server: NatsServer
) -> None:
    queue = await make_queue()
    [task] = await new_tasks(store, 1)
    await queue.publish([task])
    [delivery] = await queue.fetch(1, timeout=1.0)
    nats_server.stop()
    began = time.monotonic()
    with pytest.raises(QueueUnavailableError, match="ack"):
        await delivery.ack()
    assert time.monotonic() - began < 3.0


async def test_connect_to_nothing_fails_naming_the_url(store: InMemoryTaskStore) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    queue = NatsTaskQueue(url, store, timeout=1.0)
    began = time.monotonic()
    with pytest.raises(QueueUnavailableError, match=url):
        await queue.connect()
    assert time.monotonic() - began < 3.0
    with pytest.raises(QueueUnavailableError):
        await queue.publish(await new_tasks(store, 1))
    await queue.close()


async def test_closed_queue_refuses_work(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    await queue.close()
    await queue.close()
    with pytest.raises(QueueUnavailableError, match="closed"):
        await queue.fetch(1, timeout=0.1)
    with pytest.raises(QueueUnavailableError, match="closed"):
        await queue.ping()
