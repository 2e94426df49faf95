"""Request ids, and one canonical log line per HTTP request.

Every request gets an id: the caller's `X-Request-ID` when it is a sane token, a new one
otherwise. It is bound to the log context while the request is handled, so every line the
request causes (a deferred publish, a cancelled task, an error) carries it, and it is sent back
in the `X-Request-ID` header. When the request ends, one `http_request` line records method,
path, status, duration and the calling API key's name (never the key), and the request counts
in the Prometheus metrics (by route template, never by path). Query strings and bodies are never
logged: circuits stay out of logs.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qtask import metrics
from qtask.logs import get_logger

log = get_logger("http")

_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_HEADER = b"x-request-id"
# Label values must be a fixed set: any other method a client sends counts as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestLogMiddleware:
    """Pure ASGI (no per-request task or body buffering, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        status = 500  # stays so if the application fails before it answers
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER, request_id.encode())]
            await send(message)

        # bind/reset rather than the bound_contextvars context manager: the same, cheaper.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = getattr(scope.get("route"), "path", "unmatched")  # a template, not the path
            if b"wait=" in scope.get("query_string", b""):
                # A long poll lasts as long as its task or its wait: kept apart, it does not
                # hide the latency of plain reads.
                route += "?wait"
            count, seconds = _series(method, route, status)
            count.inc()
            seconds.observe(elapsed)
            caller = scope.get("state", {}).get("caller")  # the key's name, set by the route
            log.info(
                "http_request",
                request_id=request_id,
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(1000 * elapsed, 3),
                **({"key": caller} if caller is not None else {}),
            )


@functools.cache
def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request's counter and histogram children: labels() takes a lock and builds a key on
    every call. Bounded: methods and route templates are fixed sets, statuses few."""
    return (
        metrics.HTTP_REQUESTS.labels(method, route, str(status)),
        metrics.HTTP_SECONDS.labels(method, route),
    )


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER:
            return value.decode("ascii") if _SANE_ID.fullmatch(value) else None
    return None
