"""Build the FastAPI application around a TaskService."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from qtask import __version__
from qtask.api import backends, docs, errors, ui
from qtask.api.auth import Gate
from qtask.api.fast import FastRoutes
from qtask.api.middleware import RequestLogMiddleware
from qtask.api.routes import ReadyCheck, router
from qtask.application.live import Streams
from qtask.application.service import TaskService
from qtask.config import AuthSettings, ServerSettings


def create_app(
    service: TaskService,
    *,
    max_body_bytes: int,
    max_batch_body_bytes: int | None = None,
    body_timeout_s: float = 30.0,
    gate: Gate | None = None,
    ready_checks: dict[str, ReadyCheck] | None = None,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    streams: Streams | None = None,
    fast_routes: bool = True,
) -> FastAPI:
    """The qtask HTTP API; `lifespan` starts and stops what the service runs on.

    `gate` checks API keys and rates; without one every caller is anonymous and unlimited.
    `streams` bounds the live task streams (by default, ServerSettings' defaults).
    `fast_routes`: POST /tasks and GET /tasks/{id} bypass FastAPI's router (qtask.api.fast);
    off only in the test that compares both.
    """
    app = FastAPI(
        title="qtask",
        version=__version__,
        description="Run quantum circuits asynchronously: submit OpenQASM, fetch counts later.",
        lifespan=lifespan,
        docs_url=None,  # served by qtask.api.docs from the package, not a CDN
        redoc_url=None,
        # qtask exports Prometheus metrics, not OpenTelemetry: without this, FastAPI asks the
        # OpenTelemetry globals on every request whether they are configured (~5 % of a request).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.state.max_body_bytes = max_body_bytes
    app.state.max_batch_body_bytes = max_batch_body_bytes or max_body_bytes
    app.state.body_timeout_s = body_timeout_s
    app.state.gate = gate or Gate(AuthSettings())
    app.state.ready_checks = ready_checks or {}
    app.state.streams = streams or streams_from(ServerSettings())
    errors.install(app)
    if fast_routes:  # added first: inside the request log, which counts it
        app.add_middleware(FastRoutes)
    app.add_middleware(RequestLogMiddleware)
    app.include_router(router)
    app.include_router(backends.router)
    docs.install(app)
    ui.install(app)
    return app


def streams_from(settings: ServerSettings) -> Streams:
    """The live stream bounds `settings` give."""
    return Streams(settings.max_streams, settings.stream_poll_s, settings.stream_idle_s)
