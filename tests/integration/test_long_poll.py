"""Long polls, listings and circuit read-back on the real deployments.

`server` (conftest) is `qtask serve` and a distributed deployment with workers, API keys off.
`idle` is a distributed deployment with API keys on, no worker at first (so tasks stay queued
without using the CPU), header_timeout_s=2 and keep_alive_s=1, and a second `qtask api`
replica on the same Redis and NATS: a waiter on one replica must hear of ends caused through
the other, or by a worker.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from qtask.api.auth import key_digest, new_key
from qtask.constants import MSG_CANCELLED, MSG_NOT_FOUND, MSG_PENDING
from qtask_testkit import BELL, ServerProcess, slow_circuit, wait_done
from servers import DistributedDeployment, RoleProcess, started_api_replica

PENDING = {"status": "pending", "message": MSG_PENDING}
CANCELLED = {"status": "error", "message": MSG_CANCELLED}
NOT_FOUND = {"status": "error", "message": MSG_NOT_FOUND}
KEYS = {name: new_key() for name in ("alice", "bob")}


def submit(client: httpx.Client, qc: str = BELL) -> str:
    response = client.post("/tasks", json={"qc": qc, "shots": 10})
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def long_polls(client: httpx.Client) -> float:
    """The API process's count of requests waiting in a long poll."""
    found = re.search(r"^qtask_long_polls (\S+)$", client.get("/metrics").text, re.M)
    assert found is not None
    return float(found.group(1))


def until_waiting(client: httpx.Client, count: int, timeout: float = 10.0) -> None:
    """Poll (with a deadline) until `count` requests wait on the API process of `client`."""
    deadline = time.monotonic() + timeout
    while long_polls(client) < count:
        assert time.monotonic() < deadline, f"fewer than {count} long polls waiting"
        time.sleep(0.02)


# --- on both deployments, keys off -----------------------------------------------------------


def test_wait_answers_when_the_task_ends_before_its_deadline(client: httpx.Client) -> None:
    task_id = submit(client)
    started = time.monotonic()
    response = client.get(f"/tasks/{task_id}", params={"wait": 30}, timeout=40)
    assert response.json()["status"] == "completed"
    assert sum(response.json()["result"].values()) == 10
    assert time.monotonic() - started < 30  # answered at the end, not at the deadline


def test_wait_for_several_answers_when_all_have_ended(client: httpx.Client) -> None:
    ids = [submit(client) for _ in range(3)]
    response = client.get("/tasks", params={"ids": ",".join([*ids, "nope"]), "wait": 30})
    bodies = response.json()["tasks"]
    assert [body["task_id"] for body in bodies] == [*ids, "nope"]
    assert [body["status"] for body in bodies] == ["completed"] * 3 + ["error"]
    assert bodies[3] == {"task_id": "nope", **NOT_FOUND}


def test_wait_times_out_with_the_exact_pending_body_and_a_cancel_wakes_it(
    client: httpx.Client, server: ServerProcess | DistributedDeployment
) -> None:
    slow = submit(client, slow_circuit())
    response = client.get(f"/tasks/{slow}", params={"wait": 0.5})
    assert response.status_code == 200
    assert response.json() == PENDING
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.get, f"/tasks/{slow}", params={"wait": 60}, timeout=70)
        until_waiting(client, 1)
        assert client.delete(f"/tasks/{slow}").json() == CANCELLED
        assert waiting.result(timeout=30).json() == CANCELLED


def test_wait_for_an_unknown_task_is_not_found_at_once(client: httpx.Client) -> None:
    response = client.get("/tasks/no-such-task", params={"wait": 60}, timeout=5)
    assert response.status_code == 404
    assert response.json() == NOT_FOUND


@pytest.mark.parametrize("wait", ["0", "60.5", "-1", "soon"])
def test_wait_out_of_range_is_refused_with_a_message(client: httpx.Client, wait: str) -> None:
    response = client.get("/tasks/x", params={"wait": wait})
    assert response.status_code == 422
    assert response.json()["status"] == "error"
    assert "wait" in response.json()["message"]


def test_listing_is_newest_first_with_a_stable_cursor_and_status_filter(
    client: httpx.Client,
) -> None:
    ids = [submit(client) for _ in range(5)]
    for task_id in ids:
        wait_done(client, task_id)
    first = client.get("/tasks", params={"limit": 2}).json()
    assert [t["task_id"] for t in first["tasks"]] == ids[::-1][:2]
    newest = submit(client)  # added between pages: later pages do not shift
    second = client.get("/tasks", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [t["task_id"] for t in second["tasks"]] == ids[::-1][2:5]
    assert all(t["status"] == "completed" for t in second["tasks"])
    assert client.get("/tasks", params={"limit": 1}).json()["tasks"][0]["task_id"] == newest
    wait_done(client, newest)


def test_listing_by_status(client: httpx.Client) -> None:
    done = submit(client)
    wait_done(client, done)
    slow = submit(client, slow_circuit())
    try:
        pending = client.get("/tasks", params={"status": "pending"}).json()["tasks"]
        assert slow in [t["task_id"] for t in pending]
        assert done not in [t["task_id"] for t in pending]
        completed = client.get("/tasks", params={"status": "completed", "limit": 500}).json()
        assert done in [t["task_id"] for t in completed["tasks"]]
        assert slow not in [t["task_id"] for t in completed["tasks"]]
    finally:
        client.delete(f"/tasks/{slow}")
    errors = client.get("/tasks", params={"status": "error"}).json()["tasks"]
    assert {"task_id": slow, **CANCELLED}.items() <= errors[0].items()
    refused = client.get("/tasks", params={"status": "queued"})
    assert refused.status_code == 400
    assert "Unknown status queued" in refused.json()["message"]


def test_circuit_reads_back_the_submitted_text(client: httpx.Client) -> None:
    task_id = submit(client)
    response = client.get(f"/tasks/{task_id}/circuit")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == BELL
    missing = client.get("/tasks/no-such-task/circuit")
    assert missing.status_code == 404
    assert missing.json() == NOT_FOUND


# --- replicas, workers and the connection guards (distributed, keys on) ----------------------


class Idle:
    def __init__(self, deployment: DistributedDeployment, replica: RoleProcess, url: str):
        self.deployment = deployment
        self.replica = replica
        self.replica_url = url


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idle]:
    env = {
        "QTASK_AUTH__ENABLED": "true",
        "QTASK_AUTH__KEYS": json.dumps(
            [{"name": name, "sha256": key_digest(key)} for name, key in KEYS.items()]
        ),
        "QTASK_SERVER__HEADER_TIMEOUT_S": "2",
        "QTASK_SERVER__KEEP_ALIVE_S": "1",
    }
    directory = tmp_path_factory.mktemp("idle")
    deployment = DistributedDeployment(directory, workers=0, env=env)
    deployment.start()
    replica, url = started_api_replica(deployment, directory / "api-b.log")
    yield Idle(deployment, replica, url)
    replica.terminate()
    deployment.terminate()


def keyed(url: str, name: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {KEYS[name]}"})


def test_a_wait_three_times_the_header_timeout_outlasts_it_and_keep_alive(idle: Idle) -> None:
    with keyed(idle.deployment.url, "alice") as alice:
        task_id = submit(alice)  # no worker: it stays queued
        started = time.monotonic()
        response = alice.get(f"/tasks/{task_id}", params={"wait": 6})  # header timeout 2 s
        assert response.status_code == 200
        assert response.json() == PENDING
        assert time.monotonic() - started >= 6
        # The connection was kept and still serves the next request.
        assert alice.get(f"/tasks/{task_id}").json() == PENDING


def test_a_waiter_on_one_replica_is_woken_by_a_cancel_on_the_other(idle: Idle) -> None:
    with (
        keyed(idle.deployment.url, "alice") as on_a,
        keyed(idle.replica_url, "alice") as on_b,
        ThreadPoolExecutor(2) as pool,
    ):
        task_id = submit(on_b)
        single = pool.submit(on_a.get, f"/tasks/{task_id}", params={"wait": 60})
        several = pool.submit(on_a.get, "/tasks", params={"ids": task_id, "wait": 60})
        until_waiting(on_a, 2)
        assert on_b.delete(f"/tasks/{task_id}").json() == CANCELLED
        assert single.result(timeout=30).json() == CANCELLED
        assert several.result(timeout=30).json() == {"tasks": [{"task_id": task_id, **CANCELLED}]}


def test_waiters_on_both_replicas_are_woken_by_a_worker(idle: Idle) -> None:
    with (
        keyed(idle.deployment.url, "bob") as on_a,
        keyed(idle.replica_url, "bob") as on_b,
        ThreadPoolExecutor(4) as pool,
    ):
        ids = [submit(on_a) for _ in range(2)]
        waiting: list[Future[httpx.Response]] = [
            pool.submit(client.get, f"/tasks/{task_id}", params={"wait": 60})
            for client in (on_a, on_b)
            for task_id in ids
        ]
        until_waiting(on_a, 2)
        until_waiting(on_b, 2)
        worker = idle.deployment.add_worker()
        try:
            bodies: list[dict[str, Any]] = [f.result(timeout=60).json() for f in waiting]
        finally:
            worker.terminate()
            idle.deployment.workers.remove(worker)
        assert [body["status"] for body in bodies] == ["completed"] * 4
        assert all(sum(body["result"].values()) == 10 for body in bodies)


def test_keys_see_only_their_own_tasks_in_listings_waits_and_circuits(idle: Idle) -> None:
    with keyed(idle.deployment.url, "alice") as alice, keyed(idle.replica_url, "bob") as bob:
        mine = submit(alice)
        theirs = submit(bob)
        alice_ids = [t["task_id"] for t in alice.get("/tasks").json()["tasks"]]
        bob_ids = [t["task_id"] for t in bob.get("/tasks").json()["tasks"]]
        assert mine in alice_ids
        assert theirs not in alice_ids
        assert theirs in bob_ids
        assert mine not in bob_ids
        for path in (f"/tasks/{mine}/circuit", f"/tasks/{mine}"):
            refused = bob.get(path, params={"wait": 5} if "circuit" not in path else {})
            assert refused.status_code == 404
            assert refused.json() == NOT_FOUND
        assert alice.get(f"/tasks/{mine}/circuit").text == BELL
        gone = bob.get("/tasks", params={"ids": mine, "wait": 5}, timeout=3)
        assert gone.json() == {"tasks": [{"task_id": mine, **NOT_FOUND}]}
        for client, task_id in ((alice, mine), (bob, theirs)):
            client.delete(f"/tasks/{task_id}")


def test_after_a_redis_restart_waiters_are_woken_again_and_both_replicas_are_ready(
    idle: Idle,
) -> None:
    idle.deployment.redis.restart()
    idle.deployment.wait_ready()  # readiness includes the replica's notice subscription
    deadline = time.monotonic() + 60
    while httpx.get(f"{idle.replica_url}/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, httpx.get(f"{idle.replica_url}/ready").text
        time.sleep(0.1)
    with (
        keyed(idle.deployment.url, "alice") as on_a,
        keyed(idle.replica_url, "alice") as on_b,
        ThreadPoolExecutor(1) as pool,
    ):
        task_id = submit(on_a)
        waiting = pool.submit(on_b.get, f"/tasks/{task_id}", params={"wait": 60})
        until_waiting(on_b, 1)
        assert on_a.delete(f"/tasks/{task_id}").json() == CANCELLED
        assert waiting.result(timeout=30).json() == CANCELLED
