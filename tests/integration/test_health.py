"""The health listener of `qtask worker` and `qtask poller` (runtime/health.py) on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from qtask.runtime.health import Check, serve_health


async def _ok() -> str:
    return "ok"


async def _down() -> str:
    raise RuntimeError("worker_fetch: no completed iteration for 9.0 s (limit 3 s)")


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (an exception a handler let escape)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def _serve(checks: dict[str, Check]) -> tuple[asyncio.Server, int]:
    server = await serve_health("127.0.0.1", 0, checks)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def _handlers_done(timeout: float = 5.0) -> None:
    """Wait until every connection handler task has finished, and its callbacks have run."""
    me = asyncio.current_task()
    deadline = asyncio.get_running_loop().time() + timeout
    pending: Callable[[], bool] = lambda: any(t is not me for t in asyncio.all_tasks())  # noqa: E731
    while pending():
        assert asyncio.get_running_loop().time() < deadline, "a handler is still running"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # done-callbacks run one loop iteration after their task ends


async def test_ready_is_200_when_every_check_passes_and_503_naming_the_one_that_fails() -> None:
    server, port = await _serve({"store": _ok, "worker_fetch": _down})
    try:
        answer = await _exchange(port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        checks = orjson.loads(body)["checks"]
        assert checks["store"] == "ok"
        assert checks["worker_fetch"].startswith("failing: worker_fetch: no completed iteration")
    finally:
        server.close()
    server, port = await _serve({"store": _ok})
    try:
        answer = await _exchange(port, b"GET /ready HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        server.close()


async def test_request_line_over_the_reader_limit_is_closed_without_an_unhandled_error(
    loop_errors: list[dict[str, Any]],
) -> None:
    server, port = await _serve({"store": _ok})
    try:
        # Longer than asyncio's 64 KiB StreamReader limit, with and without its line end.
        for request in (b"GET /" + b"a" * 100_000, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n"):
            assert await _exchange(port, request) == b""  # closed, nothing answered
        await _handlers_done()
        # The listener still answers afterwards.
        assert (await _exchange(port, b"GET /health HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        server.close()
    assert loop_errors == []
