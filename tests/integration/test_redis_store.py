"""The Redis task store, on a real redis-server with AOF on."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio

from qtask.adapters.redis_hash import to_hash
from qtask.adapters.redis_rate import RedisRateLimiter
from qtask.adapters.redis_store import RedisTaskStore
from qtask.domain.task import Status, Task, new_task_id
from qtask.errors import StoreUnavailableError, TaskNotFoundError
from qtask_testkit import BELL_INFO, make_task
from servers import RedisServer

INFO = BELL_INFO


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisTaskStore]:
    opened = RedisTaskStore(redis_server.url)
    yield opened
    await opened.close()


async def stored(store: RedisTaskStore, task_id: str) -> Task:
    task = await store.get(task_id)
    assert task is not None
    return task


# --- create and get --------------------------------------------------------------------------


async def test_create_many(store: RedisTaskStore) -> None:
    tasks = [make_task(shots=n) for n in range(1, 6)]
    assert await store.create_many(tasks) == tasks
    for task in tasks:
        assert await store.get(task.id) == task
    assert await store.counts() == {"queued": 5}
    assert await store.create_many([]) == []


async def test_idempotency_key_returns_the_same_task_and_stores_once(
    store: RedisTaskStore,
) -> None:
    first = make_task(idempotency_key="abc")
    second = make_task(idempotency_key="abc", shots=7)
    assert await store.create(first) == first
    assert await store.create(second) == first
    assert await store.get(second.id) is None
    # In one batch too, and beside new tasks.
    other = make_task(idempotency_key="xyz")
    third = make_task(idempotency_key="abc")
    assert await store.create_many([third, other, replace(other, id=new_task_id())]) == [
        first,
        other,
        other,
    ]
    assert await store.counts() == {"queued": 2}
    assert len(await store.unpublished(time.time() + 1, 10)) == 2


async def test_creating_the_same_task_twice_stores_it_once(store: RedisTaskStore) -> None:
    """A create retried after a lost reply must not count or overwrite the task again."""
    task = make_task()
    await store.create(task)
    await store.start(task.id, "w1")
    assert (await store.create(task)).status is Status.RUNNING
    assert await store.counts() == {"running": 1}


async def test_idempotency_key_whose_task_vanished_is_taken_over(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    first = await store.create(make_task(idempotency_key="k"))
    await store.client.delete(f"qtask:task:{first.id}")
    second = make_task(idempotency_key="k")
    assert await store.create(second) == second
    assert await store.create(make_task(idempotency_key="k")) == second


async def test_200_concurrent_creates_are_all_stored(store: RedisTaskStore) -> None:
    tasks = [make_task(shots=n + 1) for n in range(200)]
    returned = await asyncio.gather(*(store.create(task) for task in tasks))
    assert returned == tasks
    for task in tasks:
        assert await store.get(task.id) == task
    assert await store.counts() == {"queued": 200}


async def test_prefixes_keep_stores_apart(redis_server: RedisServer) -> None:
    one = RedisTaskStore(redis_server.url, prefix="one")
    two = RedisTaskStore(redis_server.url, prefix="two")
    try:
        task = await one.create(make_task(idempotency_key="k"))
        assert await two.get(task.id) is None
        assert await two.counts() == {}
        other = make_task(idempotency_key="k")
        assert await two.create(other) == other
    finally:
        await one.close()
        await two.close()


# --- start -----------------------------------------------------------------------------------


async def test_start_marks_running_and_counts_the_attempt(store: RedisTaskStore) -> None:
    task = await store.create(make_task())
    before = time.time()
    started = await store.start(task.id, "worker-a")
    assert started is not None
    assert started.status is Status.RUNNING
    assert started.attempts == 1
    assert started.started_at is not None
    assert started.started_at >= before
    assert await store.get(task.id) == started
    # A redelivery to another worker (the first was lost): the attempt is counted on top.
    again = await store.start(task.id, "worker-b")
    assert again is not None
    assert again.attempts == 2
    assert await store.counts() == {"running": 1}


async def test_start_on_an_ended_task_returns_it_unchanged(store: RedisTaskStore) -> None:
    task = await store.create(make_task())
    done = (await store.complete(task.id, {"00": 100})).task
    assert await store.start(task.id, "w") == done
    assert await store.get(task.id) == done


async def test_start_on_unknown_task_is_none(store: RedisTaskStore) -> None:
    assert await store.start("no-such-task", "w") is None


# --- complete and fail -----------------------------------------------------------------------


async def test_first_result_wins(store: RedisTaskStore) -> None:
    task = await store.create(make_task())
    await store.start(task.id, "w")
    done = (await store.complete(task.id, {"00": 60, "11": 40})).task
    assert done.status is Status.COMPLETED
    assert done.result == {"00": 60, "11": 40}
    assert done.finished_at is not None
    assert done.error is None
    assert (await store.complete(task.id, {"01": 100})).task == done
    assert await store.fail(task.id, "late failure", dead_letter=True) == done
    assert await store.get(task.id) == done
    assert await store.dead_letters(10) == []
    assert await store.counts() == {"completed": 1}


async def test_complete_from_queued_is_allowed(store: RedisTaskStore) -> None:
    """A result from a worker whose lease lapsed (the task was requeued) still counts."""
    task = await store.create(make_task())
    done = await store.complete(task.id, {"0": 1})
    assert done.transitioned
    assert done.task.status is Status.COMPLETED


async def test_complete_or_fail_unknown_raises(store: RedisTaskStore) -> None:
    with pytest.raises(TaskNotFoundError):
        await store.complete("no-such-task", {})
    with pytest.raises(TaskNotFoundError):
        await store.fail("no-such-task", "x")


async def test_fail_with_dead_letter(store: RedisTaskStore) -> None:
    plain = await store.create(make_task())
    failed = await store.fail(plain.id, "The circuit is invalid.")
    assert failed.status is Status.FAILED
    assert failed.error == "The circuit is invalid."
    assert failed.result is None
    given_up = await store.create(make_task(attempts=2))
    await store.start(given_up.id, "w")  # the third attempt
    message = 'Given up after 3 attempts; "quotes", ünïcödé and a \\ backslash.'
    before = time.time()
    await store.fail(given_up.id, message, dead_letter=True)
    newest = await store.create(make_task())
    await store.fail(newest.id, "second", dead_letter=True)
    records = await store.dead_letters(10)
    assert [r["task_id"] for r in records] == [newest.id, given_up.id]
    assert records[1]["reason"] == message
    assert records[1]["attempts"] == 3
    assert isinstance(records[1]["at"], float)
    assert records[1]["at"] >= before
    assert await store.dead_letters(1) == records[:1]
    assert await store.dead_letters(0) == []
    assert await store.counts() == {"failed": 3}


# --- release ---------------------------------------------------------------------------------


async def test_release_penalized_keeps_the_attempt(store: RedisTaskStore) -> None:
    task = await store.create(make_task(last_error="old", attempts=1))
    await store.start(task.id, "w")  # the second attempt
    released = await store.release(task.id, "the worker crashed", penalize=True)
    assert released is not None
    assert released.status is Status.QUEUED
    assert released.attempts == 2
    assert released.last_error == "the worker crashed"
    assert await store.get(task.id) == released
    assert await store.counts() == {"queued": 1}


async def test_release_unpenalized_refunds_the_attempt(store: RedisTaskStore) -> None:
    task = await store.create(make_task(last_error="old", attempts=1))
    await store.start(task.id, "w")  # the second attempt
    released = await store.release(task.id, None, penalize=False)
    assert released is not None
    assert released.attempts == 1
    assert released.last_error == "old"


async def test_release_of_a_task_that_is_not_running_is_none(store: RedisTaskStore) -> None:
    task = await store.create(make_task())
    assert await store.release(task.id, "x", penalize=True) is None
    await store.complete(task.id, {})
    assert await store.release(task.id, "x", penalize=True) is None
    assert await store.release("no-such-task", "x", penalize=True) is None
    assert (await stored(store, task.id)).status is Status.COMPLETED


# --- the unpublished ledger ------------------------------------------------------------------


async def test_unpublished_lists_old_queued_tasks_until_published(store: RedisTaskStore) -> None:
    old = [await store.create(make_task(created_at=100.0 + n)) for n in range(3)]
    recent = await store.create(make_task(created_at=1000.0))
    assert await store.unpublished(500.0, 10) == old
    assert await store.unpublished(500.0, 2) == old[:2]
    assert await store.unpublished(100.0, 10) == []  # strictly older than the cut-off
    assert await store.unpublished(2000.0, 10) == [*old, recent]
    await store.mark_published([old[0].id, "no-such-task"])
    await store.mark_published([])
    assert await store.unpublished(500.0, 10) == old[1:]
    assert await store.unpublished(500.0, 0) == []


async def test_unpublished_skips_tasks_that_moved_on(store: RedisTaskStore) -> None:
    tasks = [await store.create(make_task(created_at=100.0 + n)) for n in range(6)]
    await store.complete(tasks[0].id, {})
    await store.start(tasks[1].id, "w")
    await store.fail(tasks[2].id, "x")
    assert await store.unpublished(500.0, 2) == tasks[3:5]
    # The tasks that moved on were dropped from the ledger, even after a release.
    await store.release(tasks[1].id, None, penalize=False)
    assert await store.unpublished(500.0, 10) == tasks[3:]
    ended = make_task(status=Status.COMPLETED, created_at=1.0)
    await store.create(ended)
    assert await store.unpublished(500.0, 10) == tasks[3:]


# --- counts ----------------------------------------------------------------------------------


async def test_counts_follow_every_transition(store: RedisTaskStore) -> None:
    assert await store.counts() == {}
    ids = [(await store.create(make_task())).id for _ in range(5)]
    await store.start(ids[0], "w")
    await store.start(ids[1], "w")
    await store.start(ids[1], "w")
    await store.complete(ids[1], {})
    await store.fail(ids[2], "x")
    await store.start(ids[3], "w")
    await store.release(ids[3], None, penalize=True)
    assert await store.counts() == {"queued": 2, "running": 1, "completed": 1, "failed": 1}


# --- the active index ------------------------------------------------------------------------


async def active_index(store: RedisTaskStore, redis_server: RedisServer) -> set[str]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        return {bytes(i).decode() for i in await client.zrange("qtask:active", 0, -1)}
    finally:
        await client.aclose()


async def test_the_active_index_follows_every_transition(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    ids = [t.id for t in await store.create_many([make_task() for _ in range(6)])]
    assert await active_index(store, redis_server) == set(ids)
    await store.start(ids[0], "w")
    await store.start(ids[1], "w")
    await store.release(ids[1], None, penalize=True)
    await store.complete(ids[2], {})
    await store.fail(ids[3], "x", dead_letter=True)
    await store.cancel(ids[4], "Task was cancelled.")
    assert await active_index(store, redis_server) == {ids[0], ids[1], ids[5]}
    done = [await stored(store, i) for i in ids[2:5]]
    assert await store.remove(done) == 3
    await store.complete(ids[0], {})
    assert await active_index(store, redis_server) == {ids[1], ids[5]}
    finished = make_task(status=Status.COMPLETED, result={}, finished_at=1.0)
    await store.create(finished)  # an ended record (as a migration would copy) is not active
    assert await active_index(store, redis_server) == {ids[1], ids[5]}


async def test_index_active_adds_tasks_stored_before_the_index_once(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    tasks = await store.create_many([make_task() for _ in range(2500)])
    await store.start(tasks[0].id, "w")
    await store.complete(tasks[1].id, {})
    client = redis.asyncio.Redis.from_url(redis_server.url)
    await client.delete("qtask:active")  # as an older qtask left it
    try:
        assert await store.active(None, 10) == []
        assert await store.index_active() == 2499
        assert await store.index_active() == 0  # once: the marker says it was done
        assert len(await store.active(None, 5000)) == 2499
        await client.delete("qtask:marker:active_index")
        assert await store.index_active() == 0  # idempotent when run again
    finally:
        await client.aclose()


async def test_index_listing_lists_tasks_stored_before_the_listings_once(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    # Hashes as the code before the listings wrote them: the create script's HSET (these
    # fields; no backend field then either) and no entry in qtask:created or qtask:created:*.
    old = [make_task(owner="alice" if i % 2 else None, created_at=100.0 + i) for i in range(7)]
    old[3] = replace(old[3], status=Status.COMPLETED, result={"00": 100}, finished_at=110.0)
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        for task in old:
            fields = to_hash(task)
            at = fields.index("backend")
            del fields[at : at + 2]
            mapping = dict(zip(fields[::2], fields[1::2], strict=True))
            await client.hset(f"qtask:task:{task.id}", mapping=mapping)
        new = await store.create(make_task(owner="alice", created_at=200.0))
        assert [i.outcome.id for i in (await store.page(None, None, None, 50)).tasks] == [new.id]

        assert await store.index_listing() == 7
        everyone = await store.page(None, None, None, 50)
        assert [i.outcome.id for i in everyone.tasks] == [new.id] + [t.id for t in old[::-1]]
        assert everyone.tasks[-1].created_at == 100.0
        alice = await store.page("alice", None, None, 50)
        assert [i.outcome.id for i in alice.tasks] == [new.id, old[5].id, old[3].id, old[1].id]
        done = await store.page("alice", frozenset({Status.COMPLETED}), None, 50)
        assert [i.outcome.id for i in done.tasks] == [old[3].id]

        assert await store.index_listing() == 0  # once: the marker says it was done
        await client.delete("qtask:marker:listing_index")
        assert await store.index_listing() == 0  # idempotent when run again
        assert len((await store.page(None, None, None, 50)).tasks) == 8
    finally:
        await client.aclose()


async def test_index_listing_adds_no_entry_for_a_task_removed_meanwhile(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    [task] = await store.create_many([make_task(owner="alice")])
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await client.delete("qtask:created", "qtask:created:alice")
        key = f"qtask:task:{task.id}"
        # The owner is read, then the task is deleted before the script adds it.
        await client.delete(key)
        assert await store._add_to_listings([key]) == 0
        assert await client.exists("qtask:created", "qtask:created:alice") == 0
    finally:
        await client.aclose()


async def test_active_drops_index_entries_of_tasks_that_ended(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    ids = sorted(t.id for t in await store.create_many([make_task() for _ in range(5)]))
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await store.complete(ids[1], {})
        await store.complete(ids[2], {})
        await client.zadd("qtask:active", {ids[1]: 0, ids[2]: 0, "vanished": 0})  # stale
        assert [t.id for t in await store.active(None, 2)] == [ids[0], ids[3]]
        assert [t.id for t in await store.active(None, 10)] == [ids[0], ids[3], ids[4]]
        assert await active_index(store, redis_server) == {ids[0], ids[3], ids[4]}
    finally:
        await client.aclose()


# --- durability and availability -------------------------------------------------------------


async def test_acknowledged_writes_survive_redis_being_killed(redis_server: RedisServer) -> None:
    first = RedisTaskStore(redis_server.url)
    try:
        tasks = [make_task(program=bytes([n]) * 3, seed=n) for n in range(20)]
        await first.create_many(tasks[:10])
        for task in tasks[10:]:
            await first.create(task)
        await first.start(tasks[0].id, "w")
        await first.complete(tasks[0].id, {"00": 100})
        await first.fail(tasks[1].id, "dead", dead_letter=True)
        await first.mark_published([t.id for t in tasks[2:5]])
        expected = [await stored(first, task.id) for task in tasks]
        counts = await first.counts()
        unpublished = await first.unpublished(time.time() + 1, 100)
    finally:
        await first.close()

    redis_server.restart(signal.SIGKILL)

    second = RedisTaskStore(redis_server.url)
    try:
        assert [await second.get(task.id) for task in tasks] == expected
        assert await second.counts() == counts
        assert await second.unpublished(time.time() + 1, 100) == unpublished
        assert [r["task_id"] for r in await second.dead_letters(10)] == [tasks[1].id]
        # The scripts are gone from the restarted server's cache; they are loaded again.
        assert (await second.complete(tasks[5].id, {"1": 1})).task.status is Status.COMPLETED
    finally:
        await second.close()


async def test_a_restart_is_ridden_out_by_the_same_store(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    task = await store.create(make_task())
    redis_server.restart(signal.SIGTERM)  # every pooled connection is now dead
    assert await store.get(task.id) == task
    other = await store.create(make_task())
    assert (await store.start(other.id, "w")) is not None


async def test_calls_made_while_redis_is_restarting_wait_for_it(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    task = await store.create(make_task())
    down, up = threading.Event(), threading.Event()

    def bounce() -> None:
        redis_server.stop(signal.SIGTERM)
        down.set()
        time.sleep(1.0)
        redis_server.start()
        up.set()

    restart = asyncio.create_task(asyncio.to_thread(bounce))
    created = []
    spanning_the_outage = 0  # calls that began before Redis was back and ended after it left
    while not restart.done():
        began_before_up = not up.is_set()
        created.append(await store.create(make_task()))
        assert await store.get(task.id) == task
        spanning_the_outage += began_before_up and down.is_set()
        await asyncio.sleep(0.01)
    await restart
    assert spanning_the_outage >= 1
    for new in created:
        assert await store.get(new.id) == new


async def test_ping_raises_when_redis_is_down(
    store: RedisTaskStore, redis_server: RedisServer
) -> None:
    await store.ping()
    redis_server.stop(signal.SIGKILL)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"Redis at 127\.0\.0\.1"):
            await store.ping(timeout=0.5)
        assert time.monotonic() - started < 3
    finally:
        redis_server.start()
    await store.ping()


async def test_a_call_that_outlasts_the_retries_raises_store_unavailable(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qtask.adapters import redis_store

    monkeypatch.setattr(redis_store, "RETRIES", 1)
    quick = RedisTaskStore(redis_server.url)
    try:
        redis_server.stop(signal.SIGKILL)
        with pytest.raises(StoreUnavailableError, match="could not read task x"):
            await quick.get("x")
        with pytest.raises(StoreUnavailableError):
            await quick.create(make_task())
    finally:
        redis_server.start()
        await quick.close()


async def test_rate_buckets_are_shared_by_every_api_process(redis_server: RedisServer) -> None:
    # Two stores stand for two API processes: together they get one bucket per key name.
    first, second = RedisTaskStore(redis_server.url), RedisTaskStore(redis_server.url)
    try:
        a = RedisRateLimiter(first, rate=2.0, burst=3)
        b = RedisRateLimiter(second, rate=2.0, burst=3)
        began = time.monotonic()
        assert [await a.take("alice"), await b.take("alice"), await a.take("alice")] == [0, 0, 0]
        wait = await b.take("alice")
        took = time.monotonic() - began
        # One token at 2 a second, less the time the calls took (bounded by what was measured,
        # not by a guess of it: on a loaded machine four round trips can take 100 ms).
        assert 0.5 - took - 0.01 <= wait <= 0.5, (wait, took)
        assert await a.take("bob") == 0.0
        await asyncio.sleep(wait + 0.05)
        assert await b.take("alice") == 0.0
        # An idle bucket expires once it would be full again (3 tokens at 2/s, plus 1 s).
        ttl_ms = await first.client.pttl("qtask:rate:alice")
        assert 0 < ttl_ms <= 2500
    finally:
        await first.close()
        await second.close()
