"""The task websocket's bounds and ends, on the in-memory store (no worker: tasks stay queued
until cancelled), through Starlette's TestClient."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning
from starlette.websockets import WebSocketDisconnect
from structlog.testing import capture_logs

from qtask.api.app import create_app
from qtask.application.live import Streams
from qtask.constants import MSG_CANCELLED, MSG_PENDING
from qtask.testing import InMemoryTaskStore
from qtask_testkit import in_memory_service

with warnings.catch_warnings():
    # Starlette would have its test client run on `httpx2`; the one here is plain httpx, which
    # it still supports (the websocket session does not use httpx at all).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)


def app_with(streams: Streams) -> TestClient:
    service = in_memory_service(InMemoryTaskStore())
    return TestClient(create_app(service, max_body_bytes=1 << 16, streams=streams))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with app_with(Streams(max_streams=1, poll_s=0.05, idle_s=60)) as test_client:
        yield test_client


def submit(client: TestClient) -> str:
    response = client.post("/tasks", json={"qc": BELL, "shots": 10})
    assert response.status_code == 202
    return str(response.json()["task_id"])


def queued(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "state": "queued", "status": "pending", "message": MSG_PENDING}


def test_a_cancel_ends_the_stream_with_the_cancelled_body_and_a_normal_close(
    client: TestClient,
) -> None:
    task_id = submit(client)
    with capture_logs() as logs, client.websocket_connect(f"/tasks/{task_id}/events") as socket:
        assert socket.receive_json() == queued(task_id)
        assert client.delete(f"/tasks/{task_id}").status_code == 200
        assert socket.receive_json() == {
            "task_id": task_id,
            "state": "cancelled",
            "status": "error",
            "message": MSG_CANCELLED,
        }
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
    assert closed.value.code == 1000
    lines = [line for line in logs if line["event"] == "task_stream"]
    assert [(line["task_id"], line["close_code"]) for line in lines] == [(task_id, 1000)]


def test_one_stream_over_the_cap_is_closed_with_1013_and_a_slot_frees_when_a_client_leaves(
    client: TestClient,
) -> None:
    task_id = submit(client)
    with client.websocket_connect(f"/tasks/{task_id}/events") as first:
        assert first.receive_json() == queued(task_id)
        with (
            client.websocket_connect(f"/tasks/{task_id}/events") as second,
            pytest.raises(WebSocketDisconnect) as refused,
        ):
            second.receive_json()
        assert refused.value.code == 1013
        assert refused.value.reason == "This server already streams 1 tasks; retry later."
    # The first client left: its slot is free again.
    with client.websocket_connect(f"/tasks/{task_id}/events") as again:
        assert again.receive_json() == queued(task_id)


def test_a_stream_whose_task_does_not_change_is_closed_with_4408_at_the_idle_limit() -> None:
    with app_with(Streams(max_streams=5, poll_s=0.05, idle_s=0.3)) as client:
        task_id = submit(client)
        with client.websocket_connect(f"/tasks/{task_id}/events") as socket:
            assert socket.receive_json() == queued(task_id)
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_json()
    assert closed.value.code == 4408
    assert closed.value.reason == "No change for 0.3 s; reconnect to follow on."


def test_messages_a_client_sends_while_it_follows_are_ignored(client: TestClient) -> None:
    task_id = submit(client)
    with client.websocket_connect(f"/tasks/{task_id}/events") as socket:
        assert socket.receive_json() == queued(task_id)
        socket.send_text("hello")
        socket.send_bytes(b"\x00")
        client.delete(f"/tasks/{task_id}")
        assert socket.receive_json()["state"] == "cancelled"


def test_server_sent_events_over_the_cap_are_refused_with_503_before_the_stream_starts(
    client: TestClient,
) -> None:
    task_id = submit(client)
    with client.websocket_connect(f"/tasks/{task_id}/events") as first:
        assert first.receive_json() == queued(task_id)
        refused = client.get(f"/tasks/{task_id}/events")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {
            "status": "error",
            "message": "This server already streams 1 tasks; retry later.",
        }
