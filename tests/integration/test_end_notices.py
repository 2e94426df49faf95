"""End notices (ports.EndNotices) on every store: an end, a cancel and a removal each reach the
listener with the task's id; the Redis subscription also resyncs after reconnecting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from qtask.adapters.redis_notices import RedisEndNotices
from qtask.adapters.redis_store import RedisTaskStore
from qtask.adapters.sqlite_store import SQLiteTaskStore
from qtask.domain.ports import EndListener
from qtask.testing import InMemoryTaskStore
from qtask_testkit import make_task
from servers import RedisServer


class Heard:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.resyncs = 0
        self.changed = asyncio.Event()

    def ended(self, ids: object) -> None:
        assert isinstance(ids, list | tuple)
        self.ids += [str(i) for i in ids]
        self.changed.set()

    def resync(self) -> None:
        self.resyncs += 1
        self.changed.set()

    async def until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


class Setup:
    def __init__(self, store: object, listen: Callable[[EndListener, Callable[[], None]], None]):
        self.store = store
        self.listen = listen


@pytest.fixture(params=["sqlite", "redis", "memory"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    if request.param == "sqlite":
        sqlite = SQLiteTaskStore(tmp_path / "t.db")
        yield Setup(sqlite, sqlite.listen)
        await sqlite.close()
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_store = RedisTaskStore(server.url)
        notices = RedisEndNotices(server.url, redis_store.ended_channel)
        notices.start()
        yield Setup(redis_store, notices.listen)
        await notices.close()
        await redis_store.close()
    else:
        memory = InMemoryTaskStore()
        yield Setup(memory, memory.listen)


async def test_ends_cancels_and_removals_are_heard(setup: Setup) -> None:
    store = setup.store
    assert isinstance(store, SQLiteTaskStore | RedisTaskStore | InMemoryTaskStore)
    heard = Heard()
    setup.listen(heard.ended, heard.resync)
    if isinstance(store, RedisTaskStore):
        await heard.until(lambda: heard.resyncs >= 1)  # subscribed
    done, cancelled, failed = make_task(), make_task(), make_task()
    await store.create_many([done, cancelled, failed])
    await store.complete(done.id, {"0": 1})
    await store.complete(done.id, {"0": 2})  # a duplicate ends nothing: no second notice
    await store.cancel(cancelled.id, "Task was cancelled.")
    await store.fail(failed.id, "boom", dead_letter=True)
    await heard.until(lambda: len(heard.ids) >= 3)
    assert heard.ids == [done.id, cancelled.id, failed.id]
    ended = await store.get(done.id)
    assert ended is not None
    assert await store.remove([ended]) == 1
    await heard.until(lambda: len(heard.ids) >= 4)
    assert heard.ids[3:] == [done.id]


async def test_redis_notices_resync_after_the_server_restarts(
    redis_server: RedisServer,
) -> None:
    store = RedisTaskStore(redis_server.url)
    notices = RedisEndNotices(redis_server.url, store.ended_channel)
    heard = Heard()
    notices.listen(heard.ended, heard.resync)
    notices.start()
    try:
        await heard.until(lambda: heard.resyncs == 1)
        await asyncio.to_thread(redis_server.restart)
        await heard.until(lambda: heard.resyncs >= 2, timeout=30)
        task = make_task()
        await store.create(task)
        await store.complete(task.id, {"1": 1})
        await heard.until(lambda: task.id in heard.ids)
    finally:
        await notices.close()
        await store.close()
