"""qtask.api.fast: POST /tasks and GET /tasks/{id} answer exactly as through FastAPI's router.

The same requests go to two apps over one service, one with the fast routes and one without;
every status, body and header (the request id aside) must match. A spy on FastAPI's router
checks which requests the fast routes took.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import structlog.testing
from fastapi import APIRouter

from qtask.api import fast
from qtask.api.app import create_app
from qtask.api.auth import Gate, key_digest
from qtask.application.service import TaskService
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import ApiKey, AuthSettings, LimitsSettings
from qtask.domain.task import Status
from qtask.execution.catalog import aer_only
from qtask.testing import InMemoryTaskStore

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
KEY = "k-secret"
MAX_BODY = 4096


class Pair:
    """Two apps over one service and store: with the fast routes, and without."""

    def __init__(self, keys: bool) -> None:
        settings = LimitsSettings(max_shots=10_000)
        self.store = InMemoryTaskStore()
        service = TaskService(
            self.store,
            self.store,
            CircuitIngestor(settings, pool=None),
            settings,
            backends=aer_only(settings),
        )
        auth = AuthSettings(
            enabled=keys, keys=(ApiKey(name="alice", sha256=key_digest(KEY)),) if keys else ()
        )
        self.fast = create_app(service, max_body_bytes=MAX_BODY, gate=Gate(auth))
        self.plain = create_app(
            service, max_body_bytes=MAX_BODY, gate=Gate(auth), fast_routes=False
        )
        self.routed: list[str] = []  # requests FastAPI's router saw, in the fast app
        self.fast.router = _Spy(self.fast.router, self.routed)  # type: ignore[assignment]
        self.fast.middleware_stack = None  # rebuilt around the spy on the next request


class _Spy:
    """FastAPI's router, noting each request it routes."""

    def __init__(self, router: Any, seen: list[str]) -> None:
        self._router = router
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._router, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self._seen.append(f"{scope['method']} {scope['path']}")
        await self._router(scope, receive, send)


@pytest.fixture(params=[False, True], ids=["keys-off", "keys-on"])
def pair(request: pytest.FixtureRequest) -> Pair:
    return Pair(keys=request.param)


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _both(
    pair: Pair, method: str, url: str, body: bytes | None = None, **headers: str
) -> tuple[httpx.Response, httpx.Response]:
    async with _client(pair.fast) as fast, _client(pair.plain) as plain:
        a = await fast.request(method, url, content=body, headers=headers)
        b = await plain.request(method, url, content=body, headers=headers)
    return a, b


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert a.content == b.content
    drop = {"x-request-id"}
    assert {k: v for k, v in a.headers.items() if k not in drop} == {
        k: v for k, v in b.headers.items() if k not in drop
    }


def _auth(pair: Pair) -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"} if pair.fast.state.gate.enabled else {}


GET_CASES = [
    "/tasks/missing",
    "/tasks/missing?wait=0.01",
    "/tasks/missing?wait=0",  # 422 from FastAPI's query validation
    "/tasks/missing?wait=-1",
    "/tasks/missing?wait=abc",
    "/tasks/missing?wait=100000",
    "/tasks/missing?wait=1e-3",
    "/tasks/missing?wait=1&wait=2",
    "/tasks/missing?other=1",
    "/tasks/",
    "/tasks/batch",
    "/tasks/a%2Fb",
]


@pytest.mark.parametrize("url", GET_CASES)
async def test_reads_of_unknown_tasks_answer_as_through_fastapi(pair: Pair, url: str) -> None:
    _same(*await _both(pair, "GET", url, **_auth(pair)))


async def test_reads_of_stored_tasks_answer_as_through_fastapi(pair: Pair) -> None:
    async with _client(pair.fast) as http:
        submitted = await http.post("/tasks", json={"qc": BELL}, headers=_auth(pair))
    task_id = submitted.json()["task_id"]
    _same(*await _both(pair, "GET", f"/tasks/{task_id}", **_auth(pair)))
    _same(*await _both(pair, "GET", f"/tasks/{task_id}?wait=0.01", **_auth(pair)))
    await pair.store.complete(task_id, {"00": 3, "11": 5})
    _same(*await _both(pair, "GET", f"/tasks/{task_id}", **_auth(pair)))
    assert pair.store.tasks[task_id].status is Status.COMPLETED


async def test_reads_without_a_valid_key_answer_as_through_fastapi(pair: Pair) -> None:
    _same(*await _both(pair, "GET", "/tasks/x"))
    _same(*await _both(pair, "GET", "/tasks/x", authorization="Bearer wrong"))


POST_CASES: list[tuple[bytes, dict[str, str]]] = [
    (b"", {}),
    (b"   ", {}),
    (b"{", {}),
    (b"[1]", {}),
    (b"{}", {}),
    (orjson.dumps({"qc": 5}), {}),
    (orjson.dumps({"qc": BELL, "shots": True}), {}),
    (orjson.dumps({"qc": BELL, "shots": "7"}), {}),
    (orjson.dumps({"qc": BELL, "shots": 0}), {}),
    (orjson.dumps({"qc": BELL, "shots": 10**9}), {}),
    (orjson.dumps({"qc": BELL, "seed": -1}), {}),
    (orjson.dumps({"qc": "OPENQASM 3.0; qubit q; h q"}), {}),
    (b"x" * (MAX_BODY + 1), {}),
    (orjson.dumps({"qc": BELL}), {"idempotency-key": "k" * 256}),
]


@pytest.mark.parametrize(("body", "headers"), POST_CASES)
async def test_refused_submissions_answer_as_through_fastapi(
    pair: Pair, body: bytes, headers: dict[str, str]
) -> None:
    _same(*await _both(pair, "POST", "/tasks", body, **headers, **_auth(pair)))
    assert pair.store.tasks == {}


async def test_accepted_submissions_answer_as_through_fastapi(pair: Pair) -> None:
    body = orjson.dumps({"qc": BELL, "shots": 100, "seed": 7})
    a, b = await _both(pair, "POST", "/tasks", body, **_auth(pair))
    assert a.status_code == b.status_code == 202
    ids = [a.json()["task_id"], b.json()["task_id"]]
    assert a.headers["location"] == f"/tasks/{ids[0]}"
    assert {k: v for k, v in a.json().items() if k != "task_id"} == {
        k: v for k, v in b.json().items() if k != "task_id"
    }
    stored = [pair.store.tasks[task_id] for task_id in ids]
    assert [(t.source, t.shots, t.seed) for t in stored] == [(BELL, 100, 7)] * 2
    # The same Idempotency-Key through either path returns the one task it made.
    a, b = await _both(pair, "POST", "/tasks", body, **{"idempotency-key": "o1"}, **_auth(pair))
    _same(a, b)


async def test_hot_requests_skip_fastapi_and_others_do_not(pair: Pair) -> None:
    async with _client(pair.fast) as http:
        headers = _auth(pair)
        task_id = (await http.post("/tasks", json={"qc": BELL}, headers=headers)).json()["task_id"]
        await http.get(f"/tasks/{task_id}", headers=headers)
        await http.get(f"/tasks/{task_id}?wait=0.01", headers=headers)
        assert pair.routed == []
        await http.get(f"/tasks/{task_id}?wait=0", headers=headers)
        await http.post("/tasks/batch", json={"tasks": [{"qc": BELL}]}, headers=headers)
        await http.get(f"/tasks/{task_id}/circuit", headers=headers)
    assert pair.routed == [
        f"GET /tasks/{task_id}",
        "POST /tasks/batch",
        f"GET /tasks/{task_id}/circuit",
    ]


async def test_hot_requests_are_logged_with_their_route_template(pair: Pair) -> None:
    with structlog.testing.capture_logs() as logs:
        async with _client(pair.fast) as http:
            await http.get("/tasks/nope", headers=_auth(pair))
            await http.post("/tasks", json={"qc": BELL}, headers=_auth(pair))
    lines = [line for line in logs if line["event"] == "http_request"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("GET", "/tasks/nope", 404),
        ("POST", "/tasks", 202),
    ]
    assert all("request_id" in line for line in lines)
    if pair.fast.state.gate.enabled:
        assert [line.get("key") for line in lines] == ["alice", "alice"]


async def test_another_get_route_under_tasks_is_left_to_fastapi(pair: Pair) -> None:
    extra = APIRouter()

    @extra.get("/tasks/stream")
    async def stream() -> dict[str, str]:
        return {"stream": "yes"}

    pair.fast.include_router(extra)
    async with _client(pair.fast) as http:
        response = await http.get("/tasks/stream", headers=_auth(pair))
        await http.get("/tasks/other", headers=_auth(pair))
    # FastAPI matched /tasks/{task_id} first (declared first), as it would without FastRoutes.
    assert response.status_code == 404
    assert pair.routed == ["GET /tasks/stream"]


async def test_a_hot_route_with_other_parameters_is_left_to_fastapi(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fast, "_POST_PARAMS", ("request", "service", "caller", "backend"))
    with structlog.testing.capture_logs() as logs:
        async with _client(pair.fast) as http:
            submitted = await http.post("/tasks", json={"qc": BELL}, headers=_auth(pair))
            await http.get(f"/tasks/{submitted.json()['task_id']}", headers=_auth(pair))
    assert submitted.status_code == 202
    assert pair.routed == ["POST /tasks"]  # the GET still took the fast route
    assert [line for line in logs if line["event"] == "fast_routes_off"] == [
        {
            "event": "fast_routes_off",
            "get": True,
            "post": False,
            "component": "api",
            "log_level": "warning",
        }
    ]
