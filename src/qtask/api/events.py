"""The task websocket, `GET /tasks/{id}/events`: a task's state now, then each change, then close.
The same messages are served as Server-Sent Events on that path over plain HTTP (event_source).

Messages are JSON text frames: the body GET /tasks/{id} answers plus `task_id` and `state`
(queued, running, completed, error, cancelled); the last one is the task's end, after which the
server closes with 1000 (normal closure). How changes are learnt, and the bounds (streams per
process, re-read period, idle limit), are qtask.application.live's; this module only carries them.

Authentication, when API keys are on: an `Authorization: Bearer` or `X-API-Key` header, as for
GET, or (browsers cannot set headers on a websocket) a first text message `{"api_key": "..."}`
sent within AUTH_MESSAGE_S of connecting. Keys never travel in the URL, which logs and proxies
keep. Messages a client sends after that are read and ignored.

Refusals close the socket with 4000 + the HTTP status GET would answer and the same message
(cut to the 123 bytes a close reason may hold): 4401 no or bad key, 4429 over the key's rate,
4404 no such task (or another key's), 4503 the store is unavailable; 4408 when the task did not
change for the idle limit (reconnect to follow on), 1013 (try again later) when the process
already serves its cap of streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from qtask import metrics
from qtask.api.auth import Gate
from qtask.application.live import StreamIdleError, Streams, TooManyStreamsError
from qtask.application.service import TaskService
from qtask.constants import MSG_CANCELLED, MSG_NOT_FOUND
from qtask.domain.task import Status, TaskOutcome
from qtask.errors import (
    InvalidRequestError,
    ObjectStoreUnavailableError,
    QTaskError,
    ShuttingDownError,
    StoreUnavailableError,
    TaskNotFoundError,
    UnauthorizedError,
)
from qtask.logs import get_logger

log = get_logger("events")

# Seconds a client without a key header has to send its key as the first message.
AUTH_MESSAGE_S = 5.0
# RFC 6455: a close frame's reason is at most 123 bytes of UTF-8.
_REASON_BYTES = 123
CLOSE_NORMAL = 1000
CLOSE_TRY_LATER = 1013
CLOSE_IDLE = 4408
CLOSE_UNAVAILABLE = 4503

Body = Callable[[TaskOutcome], dict[str, object]]


def state_of(task: TaskOutcome) -> str:
    """The stream's `state` of a task: its status, with a cancelled task told apart."""
    if task.status is Status.FAILED:
        return "cancelled" if task.error == MSG_CANCELLED else "error"
    return task.status.value


async def stream_task(
    websocket: WebSocket,
    task_id: str,
    service: TaskService,
    gate: Gate,
    streams: Streams,
    body: Body,
) -> None:
    """Serve one task's event stream on `websocket` until the task ends or the client leaves.

    Logs one `task_stream` line when it ends: the task, the key's name, the close code (1005:
    the client left first) and how long it lasted."""
    started = time.perf_counter()
    code, reason = await _serve(websocket, task_id, service, gate, streams, body)
    if code is not None:
        await close_websocket(websocket, code, reason)
    caller = websocket.scope.get("state", {}).get("caller")
    log.info(
        "task_stream",
        task_id=task_id,
        close_code=1005 if code is None else code,
        duration_ms=round(1000 * (time.perf_counter() - started), 3),
        **({"key": caller} if caller is not None else {}),
    )


async def _serve(
    websocket: WebSocket,
    task_id: str,
    service: TaskService,
    gate: Gate,
    streams: Streams,
    body: Body,
) -> tuple[int | None, str]:
    """Run the stream; the close code and reason to send (None: the client already left)."""
    await websocket.accept()
    try:
        caller = await authenticate(websocket, gate)
        websocket.scope.setdefault("state", {})["caller"] = caller
        with streams.slot(), metrics.LIVE_STREAMS.track_inprogress():

            async def wait(seconds: float | None) -> TaskOutcome:
                if seconds is None:
                    return await service.read(task_id, caller)
                return await service.wait(task_id, caller, seconds)

            events = streams.follow(wait, lambda task: task.status.terminal)
            await until_left(websocket, _send_all(websocket, task_id, events, body))
    except WebSocketDisconnect:
        return None, ""
    except TooManyStreamsError as exc:
        return CLOSE_TRY_LATER, str(exc)
    except StreamIdleError as exc:
        return CLOSE_IDLE, str(exc)
    except TaskNotFoundError:
        return 4404, MSG_NOT_FOUND
    except InvalidRequestError as exc:
        return 4000 + exc.status_code, str(exc)
    except (StoreUnavailableError, ObjectStoreUnavailableError, ShuttingDownError) as exc:
        log.warning("service_unavailable", reason=str(exc))
        return CLOSE_UNAVAILABLE, "The service is unavailable; retry shortly."
    except QTaskError as exc:
        log.error("unhandled_domain_error", error=str(exc), kind=type(exc).__name__)
        return 1011, "Internal error."
    return CLOSE_NORMAL, "The task ended."


async def authenticate(websocket: WebSocket, gate: Gate) -> str | None:
    """The caller's key name, from a header or else from the first message (public: the mesh
    coordinator's job websocket uses it too)."""
    if not gate.enabled or _has_key_header(websocket):
        return await gate.caller(websocket.headers)
    try:
        async with asyncio.timeout(AUTH_MESSAGE_S):
            message = await websocket.receive()
    except TimeoutError:
        raise UnauthorizedError(
            f'An API key is required: send {{"api_key": "<key>"}} within {AUTH_MESSAGE_S:g} s.'
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    with contextlib.suppress(orjson.JSONDecodeError):
        payload = orjson.loads(message.get("text") or message.get("bytes") or b"")
        if isinstance(payload, dict) and isinstance(key := payload.get("api_key"), str):
            return await gate.caller({"x-api-key": key})
    raise UnauthorizedError('The first message must be {"api_key": "<key>"}.')


async def event_source(
    task_id: str, caller: str | None, service: TaskService, streams: Streams, body: Body
) -> StreamingResponse:
    """The same stream as Server-Sent Events, for clients that speak HTTP only (`curl -N`).

    Each message is one `data:` line of the websocket's JSON; the response ends after the
    task's end. Errors before the first message are HTTP answers, as for GET (404, 401, 503);
    after it, one `event: error` (or `event: idle` at the idle limit) ends the stream. The cap
    is checked before the answer starts (TooManyStreamsError, 503).
    """
    first = await service.read(task_id, caller)
    if streams.open >= streams.max_streams:
        raise TooManyStreamsError(
            f"This server already streams {streams.max_streams} tasks; retry later."
        )

    async def wait(seconds: float | None) -> TaskOutcome:
        if seconds is None:
            return first
        return await service.wait(task_id, caller, seconds)

    async def lines() -> AsyncIterator[bytes]:
        try:
            with streams.slot(), metrics.LIVE_STREAMS.track_inprogress():
                async for task in streams.follow(wait, lambda task: task.status.terminal):
                    message = {"task_id": task_id, "state": state_of(task), **body(task)}
                    yield b"data: " + orjson.dumps(message) + b"\n\n"
        except StreamIdleError as exc:
            yield _sse_event("idle", str(exc))
        except TaskNotFoundError:
            yield _sse_event("error", MSG_NOT_FOUND)
        except (TooManyStreamsError, StoreUnavailableError, ShuttingDownError) as exc:
            log.warning("service_unavailable", reason=str(exc))
            yield _sse_event("error", "The service is unavailable; retry shortly.")

    return StreamingResponse(
        lines(),
        media_type="text/event-stream",
        # Proxies (nginx) would hold the events back in their buffers without this.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse_event(name: str, message: str) -> bytes:
    data = orjson.dumps({"status": "error", "message": message})
    return f"event: {name}\n".encode() + b"data: " + data + b"\n\n"


def _has_key_header(websocket: WebSocket) -> bool:
    return "authorization" in websocket.headers or "x-api-key" in websocket.headers


async def _send_all(
    websocket: WebSocket, task_id: str, events: AsyncIterator[TaskOutcome], body: Body
) -> None:
    async for task in events:
        message = {"task_id": task_id, "state": state_of(task), **body(task)}
        await websocket.send_text(orjson.dumps(message).decode())


async def until_left(websocket: WebSocket, work: Awaitable[None]) -> None:
    """Run `work`, reading (and dropping) what the client sends meanwhile, so that a client
    that leaves ends the work at once instead of at its next send."""

    async def drain() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))

    reader = asyncio.ensure_future(drain())
    worker = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, worker):
            task.cancel()
        # wait, not gather: a cancellation of this task must surface as its own, never as a
        # child's (anyio, under Starlette's test client, tells them apart).
        await asyncio.wait({reader, worker})
    first = worker if worker in done else reader
    if (error := first.exception()) is not None:
        raise error


async def close_websocket(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with `code` and `reason` (cut to the protocol's limit), unless already gone."""
    if websocket.application_state is WebSocketState.DISCONNECTED:
        return
    encoded = reason.encode()
    if len(encoded) > _REASON_BYTES:
        reason = encoded[: _REASON_BYTES - 3].decode(errors="ignore") + "..."
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code, reason)
