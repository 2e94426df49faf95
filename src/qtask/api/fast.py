"""The two hot routes, `POST /tasks` and `GET /tasks/{id}`, called without FastAPI's router.

Most clients submit one circuit per request and poll it, so these two requests are most of
what the API serves; FastAPI's routing, dependency solving and per-request wrappers cost about
as much CPU as the route itself (issue 15). `FastRoutes`, an ASGI middleware inside the
request log, recognises exactly those two requests and calls the same route functions and
dependencies as FastAPI would (routes.submit_task, routes.get_task), and turns the domain
errors they raise into answers with the application's own exception handlers, so every status
and body stays what FastAPI gives. Anything it is not sure about (another method or path, a
query other than a plain `wait=` number, an Idempotency-Key header repeated or over 255
characters) goes to FastAPI untouched, so FastAPI keeps giving its validation errors. At the
first request it checks the app's routes (`_Plan`): a hot route whose function gained a
parameter or a dependency, or another GET route under /tasks/, sends those requests to FastAPI
too, so a route added or changed elsewhere is never skipped.

Nothing here decides anything about tasks: that stays in the routes and the service.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Iterator
from typing import Any, Final, Literal

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from qtask.api import routes
from qtask.constants import MAX_WAIT_SECONDS
from qtask.logs import get_logger

log = get_logger("api")

_TASKS = "/tasks"
_TASK_PREFIX = "/tasks/"
# A plain decimal number: what anything else means is left to FastAPI's query parsing.
_WAIT = re.compile(rb"wait=([0-9]{1,9}(?:\.[0-9]{1,9})?)")
_IDEMPOTENCY_KEY = b"idempotency-key"
_IDEMPOTENCY_KEY_MAX = 255  # routes.IdempotencyKey's max_length
# The parameters FastRoutes passes to routes.get_task and routes.submit_task, in order.
_GET_PARAMS = ("task_id", "service", "caller", "wait")
_POST_PARAMS = ("request", "service", "caller", "idempotency_key")


class _Defer(enum.Enum):
    """A request this module leaves to FastAPI."""

    TO_FASTAPI = enum.auto()


_DEFER: Final = _Defer.TO_FASTAPI


class FastRoutes:
    """ASGI middleware: the hot routes straight to their route functions, the rest to FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._plan: _Plan | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            if self._plan is None:
                self._plan = _Plan.of(scope["app"])
            plan = self._plan
            method, path = scope["method"], scope["path"]
            if method == "GET" and path.startswith(_TASK_PREFIX) and plan.get:
                task_id = path[len(_TASK_PREFIX) :]
                if task_id and "/" not in task_id and task_id not in plan.shadowed:
                    wait = _wait(scope["query_string"])
                    if wait is not _DEFER:
                        await self._get(scope, receive, send, task_id, wait)
                        return
            elif method == "POST" and path == _TASKS and plan.post:
                key = _idempotency_key(scope["headers"])
                if key is not _DEFER:
                    await self._post(scope, receive, send, key)
                    return
        await self.app(scope, receive, send)

    async def _get(
        self, scope: Scope, receive: Receive, send: Send, task_id: str, wait: float | None
    ) -> None:
        scope["route"] = _GET_TASK
        scope["path_params"] = {"task_id": task_id}
        request = Request(scope, receive)
        try:
            service = await routes._service(request)
            caller = await routes._caller(request)
            response = await routes.get_task(task_id, service, caller, wait)
        except Exception as exc:
            response = await _handled(request, exc)
        await response(scope, receive, send)

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, idempotency_key: str | None
    ) -> None:
        scope["route"] = _SUBMIT_TASK
        request = Request(scope, receive)
        try:
            service = await routes._service(request)
            caller = await routes._caller(request)
            response = await routes.submit_task(request, service, caller, idempotency_key)
        except Exception as exc:
            response = await _handled(request, exc)
        await response(scope, receive, send)


def _route(name: str) -> APIRoute:
    """The APIRoute FastAPI would match: the request log names its template."""
    method, path = name.split(" ")
    for route in routes.router.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            return route
    raise LookupError(name)


_GET_TASK = _route("GET /tasks/{task_id}")
_SUBMIT_TASK = _route("POST /tasks")


class _Plan:
    """Which hot routes may skip FastAPI in this app: those whose route function, dependencies
    and path FastRoutes knows. A route that gained a parameter or a dependency, or a GET route
    such as /tasks/stream that FastAPI would match before /tasks/{task_id}, goes through FastAPI
    (and a warning says so), never through a call that would skip what was added."""

    def __init__(self, get: bool, post: bool, shadowed: frozenset[str]) -> None:
        self.get = get
        self.post = post
        self.shadowed = shadowed  # /tasks/<these> are other GET routes

    @classmethod
    def of(cls, app: Any) -> _Plan:
        """Inspect `app`'s routes once, at its first request."""
        routes = list(_walk(app.routes, "", bool(getattr(app.router, "dependencies", None))))
        shadowed = frozenset(
            path[len(_TASK_PREFIX) :]
            for path, methods, _, _ in routes
            if "GET" in methods and path.startswith(_TASK_PREFIX) and "{" not in path
        )
        get = _fits(routes, _GET_TASK, _GET_PARAMS)
        post = _fits(routes, _SUBMIT_TASK, _POST_PARAMS)
        if not (get and post):
            log.warning("fast_routes_off", get=get, post=post)
        return cls(get, post, shadowed)


def _walk(
    routes: list[Any], prefix: str, depends: bool
) -> Iterator[tuple[str, frozenset[str], Any, bool]]:
    """(path, methods, route, whether an include or the app adds dependencies) of every
    route, through included routers."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = route.include_context
            yield from _walk(
                included.routes, prefix + context.prefix, depends or bool(context.dependencies)
            )
        elif isinstance(route, APIRoute | Route):
            yield prefix + route.path, frozenset(route.methods or ()), route, depends


def _fits(
    routes: list[tuple[str, frozenset[str], Any, bool]], hot: APIRoute, params: tuple[str, ...]
) -> bool:
    """Whether `hot` is in the app as FastRoutes calls it: once, with no added dependencies,
    its function taking exactly `params`, and no other route for its method and path."""
    method = next(iter(hot.methods or ()))
    same = [
        (route, depends)
        for path, methods, route, depends in routes
        if path == hot.path and method in methods
    ]
    if len(same) != 1 or same[0][0] is not hot or same[0][1] or hot.dependencies:
        return False
    return tuple(inspect.signature(hot.endpoint).parameters) == params


def _wait(query: bytes) -> float | Literal[_Defer.TO_FASTAPI] | None:
    """The `wait` of a query that holds nothing else (None: no wait)."""
    if not query:
        return None
    found = _WAIT.fullmatch(query)
    if found is None:
        return _DEFER
    wait = float(found.group(1))
    return wait if 0 < wait <= MAX_WAIT_SECONDS else _DEFER


def _idempotency_key(
    headers: list[tuple[bytes, bytes]],
) -> str | Literal[_Defer.TO_FASTAPI] | None:
    """The Idempotency-Key header (None: none sent), unless FastAPI should judge it."""
    found: str | None = None
    for name, value in headers:
        if name == _IDEMPOTENCY_KEY:
            if found is not None or len(value) > _IDEMPOTENCY_KEY_MAX:
                return _DEFER
            found = value.decode("latin-1")
    return found


async def _handled(request: Request, exc: Exception) -> Response:
    """The answer the application's exception handlers give `exc`, as Starlette's
    ExceptionMiddleware finds them (by the class's MRO); unhandled ones propagate to the
    server-error middleware, as they would through FastAPI."""
    handlers: dict[Any, Any] = request.app.exception_handlers
    if isinstance(exc, HTTPException) and exc.status_code in handlers:  # as Starlette does
        response: Response = await handlers[exc.status_code](request, exc)
        return response
    for cls in type(exc).__mro__:
        if cls is Exception:
            break
        handler = handlers.get(cls)
        if handler is not None:
            response = await handler(request, exc)
            return response
    raise exc
