"""The one place where errors become HTTP answers: always {"status": "error", "message": ...}."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qtask.application.live import TooManyStreamsError
from qtask.constants import MSG_NOT_FOUND
from qtask.errors import (
    InvalidRequestError,
    ObjectStoreUnavailableError,
    QTaskError,
    ShuttingDownError,
    StoreUnavailableError,
    TaskNotFoundError,
)
from qtask.logs import get_logger

log = get_logger("api")


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The contract's error body."""
    body = orjson.dumps({"status": "error", "message": message})
    return Response(body, status_code, headers=headers, media_type="application/json")


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(TaskNotFoundError)
    async def not_found(_: Request, __: Exception) -> Response:
        return error_response(404, MSG_NOT_FOUND)

    @app.exception_handler(InvalidRequestError)
    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidRequestError)
        return error_response(exc.status_code, str(exc), exc.headers)

    @app.exception_handler(StoreUnavailableError)
    @app.exception_handler(ObjectStoreUnavailableError)
    @app.exception_handler(ShuttingDownError)
    async def unavailable(_: Request, exc: Exception) -> Response:
        log.warning("service_unavailable", reason=str(exc))
        return error_response(
            503, "The service cannot take tasks right now; retry shortly.", {"Retry-After": "1"}
        )

    @app.exception_handler(TooManyStreamsError)
    async def streams_full(_: Request, exc: Exception) -> Response:
        return error_response(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(QTaskError)
    async def other(_: Request, exc: Exception) -> Response:
        log.error("unhandled_domain_error", error=str(exc), kind=type(exc).__name__)
        return error_response(500, "Internal error.")

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = MSG_NOT_FOUND if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(_: Request, __: Exception) -> Response:
        # The client went away mid-request: nobody reads this answer and nothing was stored.
        log.info("client_disconnected")
        return error_response(400, "The client disconnected before the request was complete.")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled_error", exc_info=exc)
        return error_response(500, "Internal error.")


def describe_validation(errors: object) -> str:
    """Turn pydantic's error list into one sentence naming each field."""
    parts = []
    for error in errors if isinstance(errors, list) else []:
        location = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        field = ".".join(location) or "body"
        kind = error.get("type", "")
        if kind == "missing":
            parts.append(f"'{field}' is required")
        else:
            parts.append(f"'{field}': {error.get('msg', 'is invalid')}")
    return ("Invalid request: " + "; ".join(parts) + ".") if parts else "Invalid request."
