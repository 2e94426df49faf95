"""A minimal HTTP listener for processes without the API: /health, /ready and /metrics.

Compose healthchecks and orchestrators probe `qtask worker` and `qtask poller` through it.
It answers these three paths only, reads at most one request line per connection (a longer one
than the reader's limit is dropped unanswered), and closes every connection after answering.
/ready runs the checks the role passes in: its dependencies and its supervised loops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson

from qtask import metrics
from qtask.constants import READY_CHECK_TIMEOUT_SECONDS

Check = Callable[[], Awaitable[str]]


async def evaluate(checks: dict[str, Check]) -> tuple[bool, dict[str, str]]:
    """Run every readiness check at once, each within READY_CHECK_TIMEOUT_SECONDS; return
    whether all passed and what each said. A check that hangs fails rather than hangs /ready."""

    async def one(check: Check) -> str:
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                return await check()
        except TimeoutError:
            raise TimeoutError(f"no answer within {READY_CHECK_TIMEOUT_SECONDS:g} s") from None

    answers = await asyncio.gather(
        *(one(check) for check in checks.values()), return_exceptions=True
    )
    results: dict[str, str] = {}
    healthy = True
    for name, answer in zip(checks, answers, strict=True):
        if isinstance(answer, Exception):  # a failing dependency is the answer
            results[name] = f"failing: {answer}"
            healthy = False
        elif isinstance(answer, BaseException):
            raise answer
        else:
            results[name] = answer
    return healthy, results


# A probe that has not sent its request line within this many seconds is dropped.
_READ_TIMEOUT = 5.0


async def serve_health(host: str, port: int, checks: dict[str, Check]) -> asyncio.Server:
    """Start answering /health (always 200) and /ready (200 when every check passes)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                line = await reader.readline()
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            body: dict[str, object]
            content_type = "application/json"
            payload: bytes | None = None
            if path == "/metrics":
                status, body = 200, {}
                payload, content_type = metrics.render()
            elif path == "/health":
                status, body = 200, {"status": "ok"}
            elif path == "/ready":
                healthy, results = await evaluate(checks)
                status = 200 if healthy else 503
                body = {"status": "ready" if healthy else "unavailable", "checks": results}
            else:
                status, body = 404, {"status": "error", "message": "Not found."}
            if payload is None:
                payload = orjson.dumps(body)
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        # ValueError: a request line past the reader's 64 KiB limit (and UnicodeError): not a
        # probe, closed unanswered.
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
