"""The routes. Each validates its input, calls the TaskService once and shapes the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response, WebSocket
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ValidationError

from qtask import metrics
from qtask.api.auth import Gate
from qtask.api.errors import describe_validation
from qtask.api.events import event_source, stream_task
from qtask.api.schemas import (
    BatchSubmitRequest,
    BatchSubmitResponse,
    CompletedResponse,
    HealthResponse,
    MessageResponse,
    SubmitRequest,
    SubmitResponse,
    TaskListResponse,
)
from qtask.application.service import Submission, TaskService
from qtask.constants import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    MAX_IDS_PER_READ,
    MAX_WAIT_SECONDS,
    MSG_BATCH_SUBMITTED,
    MSG_NOT_FOUND,
    MSG_PENDING,
    MSG_SUBMITTED,
)
from qtask.domain.task import Status, Task, TaskOutcome
from qtask.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    QTaskError,
    RequestTimeoutError,
)
from qtask.runtime.health import evaluate

ReadyCheck = Callable[[], Awaitable[str]]
_Model = TypeVar("_Model", bound=BaseModel)

router = APIRouter()


async def _service(request: Request) -> TaskService:
    # async: FastAPI runs a plain-def dependency in a worker thread, a hop per request.
    service: TaskService = request.app.state.service
    return service


ServiceDep = Annotated[TaskService, Depends(_service)]


async def _caller(request: Request) -> str | None:
    """The calling API key's name (None when keys are off), or 401/429 before any body is read."""
    gate: Gate = request.app.state.gate
    name = await gate.caller(request.headers)
    request.state.caller = name  # the request log line names the key (never the key itself)
    return name


CallerDep = Annotated[str | None, Depends(_caller)]

_ERROR_BODY: dict[int | str, dict[str, Any]] = {
    code: {"model": MessageResponse, "description": text}
    for code, text in {
        400: "Malformed request or invalid circuit (the message says where).",
        401: "API keys are on and the request has no valid one.",
        408: "The request body did not arrive in time.",
        409: "The Idempotency-Key names a task of no API key (stored unscoped by an older qtask).",
        413: "Request or circuit over the size limit.",
        422: "Well-formed but not acceptable (wrong types, over a circuit limit).",
        429: "Over the key's request rate or pending-task cap; see Retry-After.",
        503: "The task store is unavailable; nothing was stored.",
    }.items()
}
# What every read of a task may answer besides 200.
_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    code: body for code, body in _ERROR_BODY.items() if code in (401, 429, 503)
}


IdempotencyKey = Annotated[str | None, Header(max_length=255)]
Wait = Annotated[
    float | None,
    Query(
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="Long poll: while the task is queued or running, answer as soon as it ends "
        f"or after this many seconds (at most {MAX_WAIT_SECONDS:g}) with the pending body.",
    ),
]


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads `model` itself with read_model."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _json(
    content: object, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


@router.post(
    "/tasks",
    status_code=202,
    response_model=SubmitResponse,
    responses=_ERROR_BODY,
    openapi_extra=_json_body(SubmitRequest),
    summary="Submit a circuit",
)
async def submit_task(
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Store the circuit durably and queue it; answer with the task's id at once."""
    body = await read_model(request, SubmitRequest, request.app.state.max_body_bytes)
    submission = Submission(body.qc, body.shots, body.seed, body.memory, backend=body.backend)
    task = await service.submit(submission, idempotency_key, caller)
    return _json(
        {"task_id": task.id, "message": MSG_SUBMITTED},
        202,
        {"Location": f"/tasks/{task.id}"},
    )


@router.post(
    "/tasks/batch",
    status_code=202,
    response_model=BatchSubmitResponse,
    responses=_ERROR_BODY,
    openapi_extra=_json_body(BatchSubmitRequest),
    summary="Submit several circuits",
)
async def submit_batch(
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Store every circuit, or none if any is invalid; answer with one id per circuit, in order.

    Each task is then read with GET /tasks/{id}. An invalid circuit fails the whole batch and
    the message names it (`tasks[3]: ...`). With an Idempotency-Key, a retried batch returns
    the ids the first attempt created.
    """
    body = await read_model(request, BatchSubmitRequest, request.app.state.max_batch_body_bytes)
    tasks = await service.submit_many(
        [
            Submission(item.qc, item.shots, item.seed, item.memory, backend=item.backend)
            for item in body.tasks
        ],
        idempotency_key,
        caller,
    )
    return _json({"task_ids": [task.id for task in tasks], "message": MSG_BATCH_SUBMITTED}, 202)


@router.get(
    "/tasks",
    response_model=TaskListResponse,
    responses={
        400: {"model": MessageResponse, "description": "Too many ids, a bad status or cursor."},
        **_READ_ERRORS,
    },
    summary="Read several tasks, or list the caller's tasks",
)
async def get_tasks(
    service: ServiceDep,
    caller: CallerDep,
    ids: Annotated[
        list[str] | None,
        Query(
            description="Task ids, comma-separated and/or repeated "
            f"(`?ids=a,b` or `?ids=a&ids=b`); at most {MAX_IDS_PER_READ}. Without ids: a "
            "listing of the caller's tasks."
        ),
    ] = None,
    wait: Annotated[
        float | None,
        Query(
            gt=0,
            le=MAX_WAIT_SECONDS,
            description="With ids: answer as soon as every task has ended, or after this many "
            f"seconds (at most {MAX_WAIT_SECONDS:g}) with what there is.",
        ),
    ] = None,
    status: Annotated[
        list[str] | None,
        Query(
            description="Listing: only tasks in these states (pending, completed, error), "
            "comma-separated and/or repeated."
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=LIST_LIMIT_MAX, description="Listing: tasks per page.")
    ] = LIST_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="Listing: `next_cursor` of the page before."),
    ] = None,
) -> Response:
    """With `ids`: each task's body as GET /tasks/{id} gives it, plus its `task_id`, in the
    order asked; an unknown id gets the not-found body in its place rather than failing.

    Without `ids`: the caller's tasks (every task when API keys are off), newest first, each
    with its `task_id` and `created_at` (epoch seconds), and `next_cursor` for the next page
    (null after the last). A page may hold fewer than `limit` tasks before the end.
    """
    if ids is None:
        if wait is not None:
            raise InvalidRequestError("wait applies to reads of named tasks (?ids=...&wait=S).")
        statuses = None if status is None else _split(status)
        listing = await service.list_tasks(caller, statuses, limit, cursor)
        return _json(
            {
                "tasks": [
                    {
                        "task_id": item.outcome.id,
                        "created_at": item.created_at,
                        **task_body(item.outcome),
                    }
                    for item in listing.tasks
                ],
                "next_cursor": listing.next_cursor,
            }
        )
    if status is not None or cursor is not None:
        raise InvalidRequestError("status and cursor apply to listings, which name no ids.")
    wanted = _split(ids)
    if wait is None:
        found = await service.read_many(wanted, caller)
    else:
        found = await service.wait_many(wanted, caller, wait)
    return _json(
        {
            "tasks": [
                {"task_id": task_id, **task_body(task)}
                if (task := found.get(task_id)) is not None
                else {"task_id": task_id, "status": "error", "message": MSG_NOT_FOUND}
                for task_id in wanted
            ]
        }
    )


def _split(values: list[str]) -> list[str]:
    """Query values given comma-separated and/or repeated, as one list."""
    return [part for value in values for part in value.split(",") if part]


@router.get(
    "/tasks/{task_id}",
    response_model=CompletedResponse | MessageResponse,
    responses={
        404: {"model": MessageResponse, "description": "No such task (or not this key's)."},
        **_READ_ERRORS,
    },
    summary="Read a task",
)
async def get_task(
    task_id: str, service: ServiceDep, caller: CallerDep, wait: Wait = None
) -> Response:
    """Completed: the counts (and `memory`, each shot's bitstring, for a task submitted with
    `"memory": true`). Queued or running: pending. Failed: error with the reason.

    With `wait`, a queued or running task's answer waits until it ends or `wait` seconds pass.
    """
    if wait is None:
        return _json(task_body(await service.read(task_id, caller)))
    return _json(task_body(await service.wait(task_id, caller, wait)))


@router.websocket("/tasks/{task_id}/events")
async def task_events(websocket: WebSocket, task_id: str) -> None:
    """A websocket: the task's body now (with `task_id` and `state`), then each change; closed
    with 1000 after the task's end. Keys, close codes and bounds: qtask.api.events."""
    state = websocket.app.state
    await stream_task(websocket, task_id, state.service, state.gate, state.streams, task_body)


@router.get(
    "/tasks/{task_id}/events",
    response_class=Response,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "One `data:` line per state (JSON, as the websocket sends it); the "
            "response ends after the task's end.",
        },
        404: {"model": MessageResponse, "description": "No such task (or not this key's)."},
        **_READ_ERRORS,
    },
    summary="Follow a task's state (Server-Sent Events)",
)
async def task_event_source(
    request: Request, task_id: str, service: ServiceDep, caller: CallerDep
) -> Response:
    """The task's state now, then each change, as Server-Sent Events; the same stream is a
    websocket at this path. 503 when the server already serves its cap of streams."""
    return await event_source(task_id, caller, service, request.app.state.streams, task_body)


@router.get(
    "/tasks/{task_id}/circuit",
    # Response, not PlainTextResponse: the errors stay documented (and sent) as JSON.
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "The OpenQASM text as it was submitted.",
        },
        404: {"model": MessageResponse, "description": "No such task (or not this key's)."},
        **_READ_ERRORS,
    },
    summary="Read a task's circuit",
)
async def get_circuit(task_id: str, service: ServiceDep, caller: CallerDep) -> Response:
    """The submitted OpenQASM program, as text."""
    return PlainTextResponse(await service.circuit(task_id, caller))


@router.delete(
    "/tasks/{task_id}",
    response_model=MessageResponse,
    responses={
        404: {"model": MessageResponse, "description": "No such task (or not this key's)."},
        409: {
            "model": MessageResponse,
            "description": "The task already ended (or runs while a pending-task cap is set).",
        },
        **_READ_ERRORS,
    },
    summary="Cancel a task",
)
async def cancel_task(task_id: str, service: ServiceDep, caller: CallerDep) -> Response:
    """A queued or running task ends at once and reads `{"status": "error", "message": "Task was
    cancelled."}` from then on; this answers that body. A running task's result is discarded
    when its run ends. Ended tasks: 409."""
    return _json(task_body(await service.cancel(task_id, caller)))


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(service: ServiceDep) -> Response:
    """Prometheus exposition: this process's counters and histograms, and the store's queued
    and running counts (left out when the store cannot be read)."""
    try:
        active: dict[str, int] | None = await service.active_counts()
    except QTaskError:
        active = None
    payload, content_type = metrics.render(active)
    return Response(payload, media_type=content_type)


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> Response:
    """The process is up and serving HTTP."""
    return _json({"status": "ok"})


@router.get(
    "/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
    summary="Readiness",
)
async def ready(request: Request) -> Response:
    """Every dependency answers: the store, the worker and parser processes."""
    checks: dict[str, ReadyCheck] = request.app.state.ready_checks
    healthy, results = await evaluate(checks)
    return _json(
        {"status": "ready" if healthy else "unavailable", "checks": results},
        200 if healthy else 503,
    )


def task_body(task: Task | TaskOutcome) -> dict[str, object]:
    """The contract's body for a task in any state."""
    if task.status is Status.COMPLETED:
        if isinstance(task, TaskOutcome) and task.memory:
            # null: asked for, but lost (a duplicate run replaced the result object; rare).
            return {"status": "completed", "result": task.result, "memory": task.per_shot}
        return {"status": "completed", "result": task.result}
    if task.status is Status.FAILED:
        return {"status": "error", "message": task.error or "The task failed."}
    return {"status": "pending", "message": MSG_PENDING}


class UnprocessableError(InvalidRequestError):
    """A body that parses but breaks the schema (HTTP 422)."""

    status_code = 422


async def read_model(request: Request, model: type[_Model], limit: int) -> _Model:
    """The body as `model`: at most `limit` bytes, JSON, and valid, or a 4xx saying why.

    Routes read bodies themselves (not as FastAPI parameters) so the size limit holds while the
    body streams in, and so every error has the contract's shape.
    """
    try:
        async with asyncio.timeout(request.app.state.body_timeout_s):
            payload = await _read_json(request, limit)
    except TimeoutError:
        raise RequestTimeoutError(
            f"The request body did not arrive within {request.app.state.body_timeout_s:g} s."
        ) from None
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise UnprocessableError(describe_validation(exc.errors())) from None


async def _read_json(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"The request body is over the limit of {limit} bytes.")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequestError(
            'The request body is empty; send JSON like {"qc": "OPENQASM 3.0; ..."}.'
        )
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise UnprocessableError('The request body must be a JSON object like {"qc": "..."}.')
    return payload
