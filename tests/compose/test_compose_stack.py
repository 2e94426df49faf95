"""The docker-compose stack, tested from outside as a user would: only HTTP and docker-compose.

Run by scripts/compose-e2e after `docker-compose up`; skipped in the ordinary test run, which
has no stack to talk to.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from qtask_testkit import BELL, ghz, slow_circuit, submit, wait_done

URL = os.environ.get("QTASK_COMPOSE_URL", "")
PROJECT = os.environ.get("QTASK_COMPOSE_PROJECT", "qtaskci")
# docker-compose.yml turns API keys on; this is its default key for a local trial.
API_KEY = os.environ.get("QTASK_COMPOSE_API_KEY", "qtk-local-demo-key-change-me")
MEDIUM = slow_circuit(16, 10)

pytestmark = pytest.mark.skipif(not URL, reason="needs the compose stack (scripts/compose-e2e)")


def compose(*args: str) -> str:
    """Run docker-compose on the stack's project and return its output."""
    done = subprocess.run(
        ["docker-compose", "-p", PROJECT, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def containers(service: str) -> list[str]:
    """The ids of the service's running containers."""
    return compose("ps", "-q", service).split()


def finished_by(container: str) -> int:
    """How many task_finished lines the container has logged."""
    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    return (logs.stdout + logs.stderr).count('"event": "task_finished"')


def finished_since(before: dict[str, int], total: int, timeout: float = 10) -> dict[str, int]:
    """Each container's task_finished lines since `before`. A worker logs that line just after
    storing the result clients read, so wait (bounded) until `total` lines are there."""
    deadline = time.monotonic() + timeout
    while True:
        done = {c: finished_by(c) - count for c, count in before.items()}
        if sum(done.values()) >= total or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def wait_healthy(service: str, count: int, timeout: float = 120) -> None:
    """Wait until `count` containers of the service report healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = containers(service)
        states = [
            subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                capture_output=True, text=True,
            ).stdout.strip()
            for cid in ids
        ]  # fmt: skip
        if len(ids) == count and all(state == "healthy" for state in states):
            return
        time.sleep(1)
    raise AssertionError(f"{service} not {count}x healthy: {compose('ps')}")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A client for the stack's API."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=URL, timeout=30, headers=headers) as http:
        yield http


def _check_completed(client: httpx.Client, expected: dict[str, tuple[int, int]]) -> None:
    for task_id, (qubits, shots) in expected.items():
        body = wait_done(client, task_id, timeout=180)
        assert body["status"] == "completed", (task_id, body)
        assert sum(body["result"].values()) == shots
        assert all(len(key) == qubits for key in body["result"])


def _mix(client: httpx.Client, count: int) -> dict[str, tuple[int, int]]:
    expected: dict[str, tuple[int, int]] = {}
    for i in range(count):
        if i % 4 == 0:
            expected[submit(client, MEDIUM, shots=100)] = (16, 100)
        else:
            expected[submit(client, ghz(4), shots=200)] = (4, 200)
    return expected


def test_submit_process_retrieve_bad_input_and_not_found(client: httpx.Client) -> None:
    done_id = submit(client, BELL)
    done = wait_done(client, done_id)
    assert done["status"] == "completed"
    assert set(done["result"]) == {"00", "11"}
    assert sum(done["result"].values()) == 1024
    bad = client.post("/tasks", json={"qc": "OPENQASM 3.0;\nqubit q;\nh q"})
    assert bad.status_code == 400
    assert bad.json()["status"] == "error"
    assert client.post("/tasks", content=b"nope").status_code == 400
    missing = client.get("/tasks/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404
    assert missing.json() == {"status": "error", "message": "Task not found."}
    # The stack has API keys on: without one, nothing is accepted or shown.
    assert httpx.post(f"{URL}/tasks", json={"qc": BELL}, timeout=30).status_code == 401
    assert httpx.get(f"{URL}/tasks/{done_id}", timeout=30).status_code == 401


def test_200_tasks_through_two_workers(client: httpx.Client) -> None:
    workers = containers("worker")
    assert len(workers) == 2
    before = {c: finished_by(c) for c in workers}
    expected = _mix(client, 200)
    _check_completed(client, expected)
    done = finished_since(before, 200)
    print(f"200 tasks through 2 workers: {list(done.values())}")
    assert sum(done.values()) == 200
    assert all(count > 0 for count in done.values())


def test_scaled_to_three_workers_all_take_tasks(client: httpx.Client) -> None:
    compose("up", "-d", "--no-recreate", "--scale", "worker=3")
    wait_healthy("worker", 3)
    workers = containers("worker")
    before = {c: finished_by(c) for c in workers}
    expected = {submit(client, MEDIUM, shots=100): (16, 100) for _ in range(90)}
    _check_completed(client, expected)
    done = finished_since(before, 90)
    print(f"90 tasks through 3 workers: {list(done.values())}")
    assert all(count > 0 for count in done.values())


def redis_cli(*args: str) -> str:
    """Run redis-cli in the stack's Redis container."""
    [redis] = containers("redis")
    done = subprocess.run(
        ["docker", "exec", redis, "redis-cli", *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def running_on(task_id: str, timeout: float = 60) -> str:
    """The id of the worker container that runs the task, once Redis says one does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, worker = redis_cli("HMGET", f"qtask:task:{task_id}", "status", "worker").split("\n")
        if status == "running" and worker:
            hostname = worker.rsplit("-", 1)[0]  # worker ids are hostname-pid
            [container] = [c for c in containers("worker") if c.startswith(hostname)]
            return container
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never started running")


def test_killed_worker_container_task_completes_elsewhere(client: httpx.Client) -> None:
    # Tasks of ~1 s, enough to keep every worker process busy; the container running the
    # first one is killed while it runs, with the stack's default ack wait.
    workers = containers("worker")
    tasks = [submit(client, slow_circuit(20, 12)) for _ in range(4 * len(workers))]
    victim = running_on(tasks[0])
    killed_at = time.time()
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    for task_id in tasks:
        body = wait_done(client, task_id, timeout=180)
        assert body["status"] == "completed", body
    finished_at, attempts = redis_cli(
        "HMGET", f"qtask:task:{tasks[0]}", "finished_at", "attempts"
    ).split("\n")
    assert int(attempts) == 2  # its first run died with the container
    recovered = float(finished_at) - killed_at
    print(f"docker kill: the ~1 s task that ran on the killed worker completed {recovered:.1f} s "
          f"after the kill; all {len(tasks)} completed")  # fmt: skip
    compose("up", "-d", "--no-recreate", "--scale", f"worker={len(workers)}")


def test_restarting_nats_and_redis_under_load_loses_nothing(client: httpx.Client) -> None:
    expected = _mix(client, 100)
    compose("restart", "nats")
    expected.update(_mix(client, 20))
    compose("restart", "redis")
    expected.update(_mix(client, 20))
    _check_completed(client, expected)
    print(f"NATS and Redis restarted under load: {len(expected)} tasks, all completed")
