"""Script calls coalesced into pipelines (adapters/redis_scripts.py), on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from qtask.adapters.redis_scripts import CoalescedScripts
from qtask.adapters.redis_store import RedisTaskStore
from qtask.domain.task import Status
from qtask_testkit import make_task
from servers import RedisServer

# Adds ARGV[1] to the number at KEYS[1]; fails, as a script error, when ARGV[1] is "boom".
_ADD = """
if ARGV[1] == 'boom' then return redis.error_reply('boom asked for') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    opened = redis.asyncio.Redis.from_url(redis_server.url)
    yield opened
    await opened.aclose()


def count_pipelines(monkeypatch: pytest.MonkeyPatch, client: redis.asyncio.Redis) -> list[int]:
    """The size of each pipeline `client` executes, as they run."""
    sizes: list[int] = []
    pipeline = client.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def execute_counted(*a: Any, **k: Any) -> Any:
            sizes.append(len(pipe.command_stack))
            return await execute(*a, **k)

        pipe.execute = execute_counted  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(client, "pipeline", counted)
    return sizes


async def test_calls_of_one_turn_share_one_pipeline_and_each_gets_its_own_reply(
    client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = client.register_script(_ADD)
    calls = CoalescedScripts(client)
    sizes = count_pipelines(monkeypatch, client)
    replies = await asyncio.gather(*(calls.call(add, [f"k{n % 3}"], [str(n)]) for n in range(30)))
    assert sizes == [30]
    # In call order, as if sent one after another: k0 gets 0, 3, 6, ... as running sums.
    sums = {"k0": 0, "k1": 0, "k2": 0}
    expected = []
    for n in range(30):
        sums[f"k{n % 3}"] += n
        expected.append(sums[f"k{n % 3}"])
    assert replies == expected
    # A lone call goes as before, without a pipeline.
    assert await calls.call(add, ["k0"], ["1"]) == sums["k0"] + 1
    assert sizes == [30]


async def test_an_error_fails_its_own_call_only(client: redis.asyncio.Redis) -> None:
    add = client.register_script(_ADD)
    calls = CoalescedScripts(client)
    replies = await asyncio.gather(
        calls.call(add, ["k"], ["1"]),
        calls.call(add, ["k"], ["boom"]),
        calls.call(add, ["k"], ["2"]),
        return_exceptions=True,
    )
    assert replies[0] == 1
    assert replies[2] == 3
    assert isinstance(replies[1], ResponseError)
    assert "boom asked for" in str(replies[1])


async def test_scripts_redis_forgot_are_loaded_again(client: redis.asyncio.Redis) -> None:
    add = client.register_script(_ADD)
    calls = CoalescedScripts(client)
    first = await asyncio.gather(*(calls.call(add, ["k"], ["1"]) for _ in range(5)))
    assert first == [1, 2, 3, 4, 5]
    await client.script_flush()  # as a Redis restart leaves it
    replies = await asyncio.gather(*(calls.call(add, ["k"], ["1"]) for _ in range(5)))
    assert sorted(replies) == [6, 7, 8, 9, 10]


async def test_a_cancelled_caller_leaves_the_others_their_replies(
    client: redis.asyncio.Redis,
) -> None:
    add = client.register_script(_ADD)
    calls = CoalescedScripts(client)
    left = asyncio.ensure_future(calls.call(add, ["gone"], ["1"]))
    stay = [asyncio.ensure_future(calls.call(add, ["k"], ["1"])) for _ in range(3)]
    await asyncio.sleep(0)
    left.cancel()
    assert await asyncio.gather(*stay) == [1, 2, 3]
    assert await client.get("gone") is None  # cancelled before the turn ended: never sent


async def test_a_lost_connection_fails_every_call_of_the_pipeline(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_connect_timeout=1)
    add = client.register_script(_ADD)
    calls = CoalescedScripts(client)
    await calls.call(add, ["k"], ["1"])
    redis_server.stop()
    replies = await asyncio.gather(
        *(calls.call(add, ["k"], ["1"]) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(reply, RedisConnectionError) for reply in replies), replies
    await client.aclose()


async def test_a_workers_concurrent_starts_and_completes_are_pipelined(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisTaskStore(redis_server.url)
    try:
        tasks = await store.create_many([make_task() for _ in range(20)])
        sizes = count_pipelines(monkeypatch, store.client)
        started = await asyncio.gather(*(store.start(task.id, "w1") for task in tasks))
        assert [task.status for task in started if task] == [Status.RUNNING] * 20
        done = await asyncio.gather(
            *(store.complete(task.id, {"00": 1}, worker_id="w1", attempt=1) for task in tasks)
        )
        assert all(completion.transitioned for completion in done)
        assert sizes == [20, 20]
        assert await store.counts() == {"completed": 20}
        # Already ended: the first outcome stands, in a pipeline as alone.
        again = await asyncio.gather(*(store.complete(task.id, {"11": 1}) for task in tasks[:3]))
        assert not any(completion.transitioned for completion in again)
        assert all(c.task.result == {"00": 1} for c in again)
        assert sizes == [20, 20, 3]
    finally:
        await store.close()
