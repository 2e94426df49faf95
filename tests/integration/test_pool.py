"""ChildPool with real child processes (forkserver) running the handlers in pool_handlers.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qtask.errors import QTaskError, ShuttingDownError
from qtask.runtime.pool import ChildCrashedError, ChildFailedError, ChildPool, ChildTimeoutError

HERE = str(Path(__file__).resolve().parent)


@pytest.fixture(autouse=True)
def handlers_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children import `pool_handlers` by name: put this directory on their path."""
    monkeypatch.syspath_prepend(HERE)
    # The forkserver (started once per test session) inherits the environment; the children
    # also receive the parent's sys.path when they start.
    paths = [HERE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))


async def started(size: int = 1, handler: str = "echo", **kwargs: object) -> ChildPool:
    pool = ChildPool(size, f"pool_handlers:{handler}", **kwargs)  # type: ignore[arg-type]
    await pool.start()
    return pool


@pytest.fixture
async def pool() -> AsyncIterator[ChildPool]:
    """One child running the echo handler."""
    opened = await started(1, "echo")
    yield opened
    await opened.close()


async def test_call_returns_the_answer(pool: ChildPool) -> None:
    assert pool.size == 1
    assert pool.alive() == 1
    assert pool.idle == 1
    assert await pool.call({"a": [1, 2, 3]}, timeout=10) == {"a": [1, 2, 3]}
    assert await pool.call("again", timeout=10) == "again"
    assert pool.idle == 1
    assert pool.restarts == 0


async def test_crash_raises_and_the_child_is_replaced() -> None:
    pool = await started(1, "crash_on_die")
    try:
        with pytest.raises(ChildCrashedError) as info:
            await pool.call("die", timeout=10)
        assert "SIGKILL" in str(info.value)
        assert str(info.value) == (
            "the worker process died (killed by signal SIGKILL; out of memory, if the circuit "
            "needed more than the worker had)"
        )
        assert pool.restarts == 1
        assert pool.alive() == 1
        assert pool.idle == 1
        assert await pool.call("fine", timeout=10) == "fine"
        with pytest.raises(ChildCrashedError, match="SIGKILL"):
            await pool.call("die", timeout=10)
        assert pool.restarts == 2
        assert await pool.call("still fine", timeout=10) == "still fine"
    finally:
        await pool.close()


async def test_crash_handler_always_crashes() -> None:
    pool = await started(1, "crash")
    try:
        for restarts in (1, 2):
            with pytest.raises(ChildCrashedError, match="SIGKILL"):
                await pool.call("x", timeout=10)
            assert pool.restarts == restarts
            assert pool.alive() == 1
    finally:
        await pool.close()


async def test_exit_without_answer_reports_exit_code() -> None:
    pool = await started(1, "exit_now")
    try:
        with pytest.raises(ChildCrashedError, match="exit code 3"):
            await pool.call(3, timeout=10)
        assert pool.restarts == 1
        assert pool.alive() == 1
    finally:
        await pool.close()


async def test_replacement_after_crash_answers() -> None:
    # One handler per pool, so a crash is provoked by killing the child from outside.
    pool = await started(1, "pid")
    try:
        first = await pool.call(0, timeout=10)
        os.kill(first, 9)
        with pytest.raises(ChildCrashedError, match="SIGKILL"):
            await pool.call(0, timeout=10)
        assert pool.restarts == 1
        second = await pool.call(0, timeout=10)
        assert second != first
        assert pool.alive() == 1
    finally:
        await pool.close()


async def test_timeout_kills_the_child_and_the_pool_recovers() -> None:
    pool = await started(1, "sleep")
    try:
        began = asyncio.get_running_loop().time()
        with pytest.raises(ChildTimeoutError, match=r"0\.3 s"):
            await pool.call(30, timeout=0.3)
        assert asyncio.get_running_loop().time() - began < 10
        assert pool.restarts == 1
        assert pool.alive() == 1
        assert await pool.call(0, timeout=10) == 0
    finally:
        await pool.close()


async def test_handler_error_keeps_the_same_child() -> None:
    pool = await started(1, "raise_error")
    try:
        with pytest.raises(ChildFailedError) as info:
            await pool.call("bad input", timeout=10)
        assert str(info.value) == "ValueError: bad input"
        assert pool.restarts == 0
        assert pool.alive() == 1
        assert pool.idle == 1
        with pytest.raises(ChildFailedError):
            await pool.call("again", timeout=10)
        assert pool.restarts == 0
    finally:
        await pool.close()


async def test_handler_error_child_stays_usable() -> None:
    # The same child answers after a handler error: the pid handler fails on bad input.
    pool = await started(1, "pid")
    try:
        before = await pool.call(0, timeout=10)
        with pytest.raises(ChildFailedError, match="ValueError"):
            await pool.call("not a number", timeout=10)
        assert await pool.call(0, timeout=10) == before
        assert pool.restarts == 0
    finally:
        await pool.close()


async def test_init_runs_in_each_child() -> None:
    pool = await started(2, "state", init_path="pool_handlers:init", init_args=("initialised",))
    try:
        answers = await asyncio.gather(*(pool.call(0, timeout=10) for _ in range(4)))
        assert answers == ["initialised"] * 4
    finally:
        await pool.close()


async def test_calls_run_in_parallel_on_different_children() -> None:
    pool = await started(2, "pid")
    try:
        pids = await asyncio.gather(pool.call(0.2, timeout=10), pool.call(0.2, timeout=10))
        assert len(set(pids)) == 2
        assert pool.alive() == 2
    finally:
        await pool.close()


async def test_calls_one_at_a_time_go_to_the_child_that_answered_last() -> None:
    # A trickle of requests keeps one child warm instead of waking each in turn.
    pool = await started(3, "pid")
    try:
        pids = [await pool.call(0, timeout=10) for _ in range(6)]
        assert len(set(pids)) == 1
        assert pool.idle == 3
    finally:
        await pool.close()


async def test_cancelled_call_replaces_the_child() -> None:
    pool = await started(1, "pid")
    try:
        first = await pool.call(0, timeout=10)
        call = asyncio.create_task(pool.call(30, timeout=60))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        second = await pool.call(0, timeout=10)  # waits for the replacement
        assert second != first
        assert pool.restarts == 1
    finally:
        await pool.close()


async def test_close_kills_every_child() -> None:
    pool = await started(3, "echo")
    assert pool.alive() == 3
    await pool.close()
    assert pool.alive() == 0
    with pytest.raises(ShuttingDownError):
        await pool.call("x", timeout=10)


async def test_close_fails_a_call_in_flight() -> None:
    pool = await started(1, "sleep")
    call = asyncio.create_task(pool.call(30, timeout=1.5))
    await asyncio.sleep(0.2)
    began = asyncio.get_running_loop().time()
    await pool.close()
    try:
        with pytest.raises(ChildCrashedError):
            await asyncio.wait_for(call, 5)
        assert asyncio.get_running_loop().time() - began < 1.0
    finally:
        assert pool.alive() == 0
        assert pool.restarts == 0  # nothing is replaced once closing


async def test_unknown_handler_fails_to_start() -> None:
    pool = ChildPool(1, "pool_handlers:no_such_handler")
    with pytest.raises(QTaskError, match="failed to start"):
        await pool.start()
    assert pool.alive() == 0
    await pool.close()


async def test_worker_shutdown_requeues_an_interrupted_task(tmp_path: Path) -> None:
    from qtask.adapters.sqlite_store import SQLiteTaskStore
    from qtask.circuits.ingest import Limits, ingest
    from qtask.config import WorkerSettings
    from qtask.domain.task import Status, Task, new_task_id
    from qtask.worker.runner import Worker

    source = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
        "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
    )
    limits = Limits(1 << 20, 100, 100_000, 1 << 30)
    info = ingest(source, limits).info
    store = SQLiteTaskStore(tmp_path / "qtask.db")
    pool = await started(1, "hang")
    settings = WorkerSettings(processes=1, max_attempts=3, task_timeout_s=1.5, batch_size=4)
    worker = Worker(store, store, pool, settings)
    try:
        task = await store.create(Task(id=new_task_id(), source=source, info=info, shots=10))
        worker.start()
        for _ in range(200):
            current = await store.get(task.id)
            if current is not None and current.status is Status.RUNNING:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the child is now running the task
        await worker.stop(grace=0.1)
        after = await store.get(task.id)
        assert after is not None
        assert after.status is Status.QUEUED, after.error
        assert after.attempts == 0
    finally:
        await pool.close()
        await store.close()


def test_large_reply_arrives_whole_under_uvloop() -> None:
    # uvloop's add_reader leaves the pipe non-blocking; a reply far larger than the pipe's
    # buffer then arrives in parts, and reading it must wait for the rest, not fail.
    import uvloop

    async def scenario() -> None:
        opened = await started(1, "echo")
        try:
            payload = os.urandom(1 << 20) * 8
            for _ in range(3):
                assert await opened.call(payload, timeout=30) == payload
        finally:
            await opened.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
