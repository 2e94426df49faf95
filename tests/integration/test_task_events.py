"""The task websocket (and its Server-Sent Events twin), GET /tasks/{id}/events, on a real
`qtask serve` and on a distributed deployment with two API replicas.

`keyed` is `qtask serve` with API keys on and a 0.2 s re-read, so a run of a second or more is
seen as `running`, and with header_timeout_s=2 and keep_alive_s=1, which must not cut a stream.
`replicas` is a distributed deployment with no worker at first (tasks stay queued) and a second
API replica; its re-read period is the longest allowed (60 s), so a stream that hears of a
worker's end sooner heard it through the end notices.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from qtask.api.auth import key_digest, new_key
from qtask_testkit import BELL, ServerProcess, slow_circuit, submit
from servers import DistributedDeployment, started_api_replica

KEYS = {name: new_key() for name in ("alice", "bob")}
AUTH_ENV = {
    "QTASK_AUTH__ENABLED": "true",
    "QTASK_AUTH__KEYS": json.dumps(
        [{"name": name, "sha256": key_digest(key)} for name, key in KEYS.items()]
    ),
}


def ws_url(http_url: str, task_id: str) -> str:
    return http_url.replace("http://", "ws://", 1) + f"/tasks/{task_id}/events"


def header(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def drain(socket: ClientConnection, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every message until the server closes; the close code and reason stay on `socket`."""
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            messages.append(json.loads(socket.recv(timeout=deadline - time.monotonic())))
    except ConnectionClosed:
        return messages


def closed_with(socket: ClientConnection) -> tuple[int | None, str | None]:
    assert drain(socket, 30) == []
    return socket.close_code, socket.close_reason


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        **AUTH_ENV,
        "QTASK_SERVER__STREAM_POLL_S": "0.2",
        "QTASK_SERVER__HEADER_TIMEOUT_S": "2",
        "QTASK_SERVER__KEEP_ALIVE_S": "1",
    }
    server = ServerProcess(tmp_path_factory.mktemp("events") / "data", workers=1, env=env)
    server.start()
    yield server
    server.terminate()


def client(server: ServerProcess | DistributedDeployment | str, name: str) -> httpx.Client:
    url = server if isinstance(server, str) else server.url
    return httpx.Client(base_url=url, timeout=60, headers=header(name))


def test_a_stream_sends_each_state_once_then_the_final_body_and_closes_normally(
    keyed: ServerProcess,
) -> None:
    with client(keyed, "alice") as alice:
        # ~2 s on one core (the default slow circuit, ~15 s, was only waited out): ten of the
        # server's 0.2 s re-reads while it runs.
        task_id = submit(alice, slow_circuit(20, 20), shots=10)
        with connect(ws_url(keyed.url, task_id), additional_headers=header("alice")) as socket:
            messages = drain(socket)
            assert socket.close_code == 1000
        final = alice.get(f"/tasks/{task_id}").json()
    states = [m["state"] for m in messages]
    # Queued may pass before the first read; running lasts seconds, so the re-read sees it.
    assert states in (["queued", "running", "completed"], ["running", "completed"])
    assert all(m["task_id"] == task_id for m in messages)
    assert messages[0]["status"] == "pending"
    assert messages[-1] == {"task_id": task_id, "state": "completed", **final}
    assert sum(final["result"].values()) == 10


def running(server: ServerProcess, task_id: str) -> str:
    """`task_id` once its run has started (a task submitted after it then waits for the one
    worker process; submitted together, the worker may run the small one first)."""
    deadline = time.monotonic() + 60
    while server.stored_status(task_id) != "running":
        assert time.monotonic() < deadline, f"{task_id} never started"
        time.sleep(0.05)
    return task_id


def test_a_browser_sends_its_key_as_the_first_message(keyed: ServerProcess) -> None:
    with client(keyed, "bob") as bob:
        task_id = submit(bob, BELL, shots=10)
        with connect(ws_url(keyed.url, task_id)) as socket:
            socket.send(json.dumps({"api_key": KEYS["bob"]}))
            messages = drain(socket)
            assert socket.close_code == 1000
    assert messages[-1]["state"] == "completed"
    assert messages[-1]["result"].keys() <= {"00", "11"}


def test_a_stream_of_an_ended_task_sends_its_end_at_once_and_a_cancel_is_told_apart(
    keyed: ServerProcess,
) -> None:
    with client(keyed, "alice") as alice:
        busy = running(keyed, submit(alice, slow_circuit(), shots=10))
        task_id = submit(alice, BELL, shots=10)  # one worker: it waits behind `busy`
        assert alice.delete(f"/tasks/{task_id}").status_code == 200
        with connect(ws_url(keyed.url, task_id), additional_headers=header("alice")) as socket:
            messages = drain(socket)
        alice.delete(f"/tasks/{busy}")
    assert messages == [
        {
            "task_id": task_id,
            "state": "cancelled",
            "status": "error",
            "message": "Task was cancelled.",
        }
    ]


def test_a_quiet_stream_outlasts_the_header_timeout_and_keep_alive_and_then_gets_its_end(
    keyed: ServerProcess,
) -> None:
    with client(keyed, "alice") as alice:
        busy = running(keyed, submit(alice, slow_circuit(), shots=10))
        task_id = submit(alice, BELL, shots=10)  # one worker: it stays queued behind `busy`
        with connect(ws_url(keyed.url, task_id), additional_headers=header("alice")) as socket:
            assert json.loads(socket.recv(timeout=30))["state"] == "queued"
            # Nothing changes for 4 s, past both of the server's connection timeouts.
            with pytest.raises(TimeoutError):
                socket.recv(timeout=4)
            assert alice.delete(f"/tasks/{task_id}").status_code == 200
            assert json.loads(socket.recv(timeout=30))["state"] == "cancelled"
            assert drain(socket) == []
            assert socket.close_code == 1000
        alice.delete(f"/tasks/{busy}")


@pytest.mark.parametrize(
    ("headers", "first_message", "reason"),
    [
        ({"X-API-Key": "qtk_wrong"}, None, "The API key is not valid."),
        ({}, '{"api_key": "qtk_wrong"}', "The API key is not valid."),
        ({}, "not json", 'The first message must be {"api_key": "<key>"}.'),
        ({}, None, 'An API key is required: send {"api_key": "<key>"} within 5 s.'),
    ],
    ids=["bad-header", "bad-key-message", "not-json", "silent"],
)
def test_a_stream_without_a_valid_key_is_closed_with_4401(
    keyed: ServerProcess, headers: dict[str, str], first_message: str | None, reason: str
) -> None:
    with client(keyed, "alice") as alice:
        task_id = submit(alice, BELL, shots=10)
    with connect(ws_url(keyed.url, task_id), additional_headers=headers) as socket:
        if first_message is not None:
            socket.send(first_message)
        assert closed_with(socket) == (4401, reason)


def test_another_keys_task_and_an_unknown_task_are_closed_with_4404(keyed: ServerProcess) -> None:
    with client(keyed, "alice") as alice:
        task_id = submit(alice, BELL, shots=10)
    for target in (task_id, "no-such-task"):
        with connect(ws_url(keyed.url, target), additional_headers=header("bob")) as socket:
            assert closed_with(socket) == (4404, "Task not found.")


# --- two API replicas, a worker that starts later --------------------------------------------


class Replicas:
    def __init__(self, deployment: DistributedDeployment, other_url: str) -> None:
        self.deployment = deployment
        self.other_url = other_url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    directory = tmp_path_factory.mktemp("replicas")
    env = {"QTASK_SERVER__STREAM_POLL_S": "60"}
    deployment = DistributedDeployment(directory, workers=0, env=env)
    deployment.start()
    replica, url = started_api_replica(deployment, directory / "api-b.log")
    yield Replicas(deployment, url)
    replica.terminate()
    deployment.terminate()


def test_a_stream_on_one_replica_gets_the_end_of_a_task_a_worker_ran_for_the_other(
    replicas: Replicas,
) -> None:
    deployment = replicas.deployment
    with httpx.Client(base_url=deployment.url, timeout=60) as on_a:
        task_id = submit(on_a, BELL, shots=10)
        with (
            connect(ws_url(replicas.other_url, task_id)) as on_b,
            connect(ws_url(deployment.url, task_id)) as also_on_a,
        ):
            assert json.loads(on_b.recv(timeout=30))["state"] == "queued"
            assert json.loads(also_on_a.recv(timeout=30))["state"] == "queued"
            worker = deployment.add_worker()
            try:
                # Well inside the 60 s re-read period: only the end notice can deliver it.
                rest_b, rest_a = drain(on_b, 45), drain(also_on_a, 45)
            finally:
                worker.terminate()
                deployment.workers.remove(worker)
            assert on_b.close_code == 1000
        final = on_a.get(f"/tasks/{task_id}").json()
    assert final["status"] == "completed"
    assert rest_b[-1] == {"task_id": task_id, "state": "completed", **final}
    assert rest_a[-1] == rest_b[-1]


def test_server_sent_events_give_the_same_messages_and_end_with_the_task(
    keyed: ServerProcess,
) -> None:
    with client(keyed, "alice") as alice:
        task_id = submit(alice, BELL, shots=10)
        headers = {"Accept": "text/event-stream"}
        with alice.stream("GET", f"/tasks/{task_id}/events", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
        final = alice.get(f"/tasks/{task_id}").json()
        missing = alice.get("/tasks/no-such-task/events", headers=headers)
        theirs = httpx.get(
            f"{keyed.url}/tasks/{task_id}/events", headers={**headers, **header("bob")}
        )
    assert all(line.startswith("data: ") for line in lines)
    messages = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert messages[-1] == {"task_id": task_id, "state": "completed", **final}
    assert [m["state"] for m in messages[:-1]] in (
        [],
        ["queued"],
        ["running"],
        ["queued", "running"],
    )
    assert (missing.status_code, missing.json()["message"]) == (404, "Task not found.")
    assert theirs.status_code == 404
