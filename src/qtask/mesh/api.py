"""The coordinator's HTTP API (FR-009, FR-012, FR-014), on qtask's own API machinery.

Reused, not copied: API keys and rate limits (qtask.api.auth.Gate, through the routes'
CallerDep), body size and read-time limits and the 4xx shapes (qtask.api.routes.read_model),
the one error handler (qtask.api.errors), the request log with request ids
(RequestLogMiddleware), live streams (qtask.application.live via qtask.api.events' websocket
helpers), and circuit ingestion (qtask.circuits.ingest: OpenQASM 2 and 3, errors with line
and column).

Routes: POST /api/v1/circuits/submit -> 202 {"job_id"} at once; GET /api/v1/jobs/{id};
DELETE /api/v1/jobs/{id} (cancel: FAILED "cancelled"; 409 once ended otherwise);
websocket /api/v1/jobs/{id}/ws (the job now, then each change; closed 1000 after its end);
GET /api/v1/nodes (?gate=&min_fidelity=&available=&qubits=); /health, /ready, /metrics.
Routes are thin: they validate and call the Runtime or the Registry once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request, Response, WebSocket
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.websockets import WebSocketDisconnect

from qtask import __version__, metrics
from qtask.api import errors
from qtask.api.app import streams_from
from qtask.api.auth import Gate
from qtask.api.errors import error_response
from qtask.api.events import (
    CLOSE_IDLE,
    CLOSE_NORMAL,
    CLOSE_TRY_LATER,
    authenticate,
    close_websocket,
    until_left,
)
from qtask.api.middleware import RequestLogMiddleware
from qtask.api.routes import CallerDep, IdempotencyKey, read_model
from qtask.application.live import StreamIdleError, Streams, TooManyStreamsError
from qtask.circuits.ingest import Limits, ingest
from qtask.config import Settings
from qtask.errors import InvalidRequestError, QTaskError
from qtask.logs import get_logger
from qtask.mesh import coord_metrics
from qtask.mesh.jobs import Job
from qtask.mesh.registry import Registry
from qtask.mesh.runtime import JobNotFoundError, Runtime
from qtask.runtime.health import Check, evaluate

log = get_logger("mesh.api")

router = APIRouter(prefix="/api/v1")


class Constraints(BaseModel):
    """What the node that runs the job must meet."""

    model_config = ConfigDict(extra="forbid")
    min_fidelity: float = Field(default=0.0, ge=0.0, le=1.0)


class SubmitJob(BaseModel):
    """POST /api/v1/circuits/submit."""

    model_config = ConfigDict(extra="forbid")
    qasm: str = Field(min_length=1, description="OpenQASM 2 or 3 source.")
    shots: StrictInt = Field(default=1024, ge=1, le=1_000_000)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    constraints: Constraints = Constraints()


@dataclass(frozen=True, slots=True)
class Coordinator:
    """What the API needs of the running coordinator (set on app.state.coordinator)."""

    runtime: Runtime
    registry: Registry
    limits: Limits
    health: Callable[[], dict[str, Any]]
    job_counts: Callable[[], dict[str, int]]


def _coordinator(request: Request | WebSocket) -> Coordinator:
    coordinator: Coordinator = request.app.state.coordinator
    return coordinator


def _json(content: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code, media_type="application/json")


def _visible(job: Job, caller: str | None) -> Job:
    """The job, if the caller may see it (with keys on: only its own)."""
    if caller is not None and job.owner != caller:
        raise JobNotFoundError(f"No job has the id {job.id!r}.")
    return job


@router.post("/circuits/submit", status_code=202, summary="Submit a circuit to the mesh")
async def submit(
    request: Request, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Check the circuit (OpenQASM 2 or 3; a syntax error answers 400 with line and column),
    store the job QUEUED and answer its id at once. A retry with the same `Idempotency-Key`
    answers the job the first one created."""
    body = await read_model(request, SubmitJob, request.app.state.max_body_bytes)
    coordinator = _coordinator(request)
    # Off the event loop: the OpenQASM 3 fallback parser costs ~0.2 ms per statement. Its
    # CircuitError answers as on qtask's POST /tasks: 400, 422 for a circuit over a limit.
    await asyncio.to_thread(ingest, body.qasm, coordinator.limits)
    job = await coordinator.runtime.submit(
        body.qasm, body.shots, body.seed, body.constraints.min_fidelity, caller, idempotency_key
    )
    return _json({"job_id": job.id, "state": job.state.value}, 202)


@router.get("/jobs/{job_id}", summary="A job's state, fragments and counts")
async def get_job(job_id: str, request: Request, caller: CallerDep) -> Response:
    """QUEUED | COMPILING | RESERVING | EXECUTING | COMPLETED | FAILED, each fragment attempt
    (node, attempt, start, end, status, error), the counts when COMPLETED, the error when
    FAILED."""
    runtime = _coordinator(request).runtime
    return _json(_visible(runtime.job(job_id), caller).body())


@router.delete("/jobs/{job_id}", summary="Cancel a job")
async def cancel_job(job_id: str, request: Request, caller: CallerDep) -> Response:
    """A job not yet ended ends at once: FAILED with the error "cancelled"; its reservations
    are released, and a fragment already running on a node has its counts discarded. Answers
    the job's body; again for a cancelled job; 409 for a job that ended otherwise."""
    runtime = _coordinator(request).runtime
    _visible(runtime.job(job_id), caller)
    return _json((await runtime.cancel(job_id)).body())


@router.websocket("/jobs/{job_id}/ws")
async def job_stream(websocket: WebSocket, job_id: str) -> None:
    """The job's body now, then each change; closed with 1000 after its end. Keys, close codes
    and bounds as the task websocket's (qtask.api.events)."""
    code, reason = await _serve_stream(websocket, job_id)
    if code is not None:
        await close_websocket(websocket, code, reason)


async def _serve_stream(websocket: WebSocket, job_id: str) -> tuple[int | None, str]:
    state = websocket.app.state
    runtime = _coordinator(websocket).runtime
    streams: Streams = state.streams
    await websocket.accept()
    try:
        caller = await authenticate(websocket, state.gate)
        with streams.slot():

            async def wait(seconds: float | None) -> Job:
                if seconds is None:
                    return _visible(runtime.job(job_id), caller)
                return _visible(await runtime.wait(job_id, seconds), caller)

            async def send_all() -> None:
                async for job in streams.follow(wait, lambda job: job.state.terminal):
                    await websocket.send_text(orjson.dumps(job.body()).decode())

            await until_left(websocket, send_all())
    except WebSocketDisconnect:
        return None, ""
    except TooManyStreamsError as exc:
        return CLOSE_TRY_LATER, str(exc)
    except StreamIdleError as exc:
        return CLOSE_IDLE, str(exc)
    except JobNotFoundError as exc:
        return 4404, str(exc)
    except InvalidRequestError as exc:
        return 4000 + exc.status_code, str(exc)
    except QTaskError as exc:
        log.error("unhandled_domain_error", error=str(exc), kind=type(exc).__name__)
        return 1011, "Internal error."
    return CLOSE_NORMAL, "The job ended."


@router.get("/nodes", summary="The registry, filtered (FR-002)")
async def nodes(
    request: Request,
    caller: CallerDep,
    gate: Annotated[str | None, Query(max_length=64, description="Offers this gate.")] = None,
    min_fidelity: Annotated[float | None, Query(ge=0, le=1)] = None,
    available: Annotated[bool | None, Query(description="Available now (or not).")] = None,
    qubits: Annotated[int | None, Query(ge=1, description="Takes this many qubits.")] = None,
) -> Response:
    """Each node with its status (available, busy, draining, unavailable, stale), degraded
    reasons, gates, qubit range, measured fidelity and link, by node id."""
    registry = _coordinator(request).registry
    now = time.time()
    found = registry.query(
        now, gate=gate, min_fidelity=min_fidelity, available=available, qubits=qubits
    )
    return _json({"nodes": [registry.view(entry, now) for entry in found]})


health_router = APIRouter()


@health_router.get("/health", summary="The coordinator and its dependencies")
async def health(request: Request) -> Response:
    """200 with the database, the libp2p host and the node count; 503 when the database or
    the host is down."""
    report = _coordinator(request).health()
    return _json(report, 200 if report["status"] == "ok" else 503)


@health_router.get("/ready", summary="Readiness")
async def ready(request: Request) -> Response:
    """Every dependency answers: the database, the libp2p host, the ping loop."""
    healthy, results = await evaluate(request.app.state.ready_checks)
    return _json(
        {"status": "ready" if healthy else "unavailable", "checks": results},
        200 if healthy else 503,
    )


@health_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition, with the job and node gauges read now."""
    coordinator = _coordinator(request)
    try:
        counts = coordinator.job_counts()
    except QTaskError:
        counts = {}
    for state in ("QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED", "FAILED"):
        coord_metrics.JOBS.labels(state).set(counts.get(state, 0))
    ended = counts.get("COMPLETED", 0) + counts.get("FAILED", 0)
    coord_metrics.SUCCESS_RATIO.set(counts.get("COMPLETED", 0) / ended if ended else 0.0)
    now = time.time()
    statuses: dict[str, int] = {}
    for entry in coordinator.registry.entries():
        status = coordinator.registry.status(entry, now)
        statuses[status] = statuses.get(status, 0) + 1
    for status in ("available", "busy", "draining", "unavailable", "stale"):
        coord_metrics.NODES.labels(status).set(statuses.get(status, 0))
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)


def create_app(
    settings: Settings,
    coordinator: Coordinator,
    *,
    ready_checks: dict[str, Check],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    gate: Gate | None = None,
) -> FastAPI:
    """The coordinator's FastAPI app with qtask's limits, keys, error handler and request log."""
    app = FastAPI(
        title="qtask mesh coordinator",
        version=__version__,
        description="Submit OpenQASM to the mesh; follow the job; list the service nodes.",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.coordinator = coordinator
    app.state.max_body_bytes = settings.limits.max_body_bytes
    app.state.body_timeout_s = settings.limits.body_timeout_s
    app.state.gate = gate or Gate(settings.auth)
    app.state.ready_checks = ready_checks
    app.state.streams = streams_from(settings.server)
    errors.install(app)

    @app.exception_handler(JobNotFoundError)
    async def not_found(_: Request, exc: Exception) -> Response:
        return error_response(404, str(exc))

    app.add_middleware(RequestLogMiddleware)
    app.include_router(router)
    app.include_router(health_router)
    return app
