"""End to end: federation (A runs tasks on B through a `qtask` backend) with either side
SIGKILLed: nothing lost, every task ends, none runs twice on B or completes twice on A."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qtask_testkit import ServerProcess, remote_env, slow_circuit, wait_done

# ~20-50 ms on Aer here: 200 of them (the number outstanding) keep B's one worker busy
# for several seconds.
MEDIUM = slow_circuit(14, 10)
TASKS = 200


def _stop(*servers: ServerProcess) -> None:
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.terminate()


def _submit_batch(url: str, count: int, **extra: object) -> list[str]:
    items = [{"qc": MEDIUM, "shots": 100, "backend": "remote", **extra} for _ in range(count)]
    response = httpx.post(f"{url}/tasks/batch", json={"tasks": items}, timeout=60)
    assert response.status_code == 202, response.text
    return list(response.json()["task_ids"])


def _wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def _statuses(server: ServerProcess) -> Counter[str]:
    conn = sqlite3.connect(server.data_dir / "qtask.db")
    try:
        return Counter(row[0] for row in conn.execute("SELECT status FROM tasks"))
    finally:
        conn.close()


def _completions(server: ServerProcess) -> Counter[str]:
    """How many times A's log says each task completed."""
    done: Counter[str] = Counter()
    for line in server.log().splitlines():
        if '"task_finished"' in line and '"completed"' in line:
            done[json.loads(line)["task_id"]] += 1
    return done


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "b", workers=1)
    server.start()
    yield server
    _stop(server)


def _check_all_completed(front: ServerProcess, ids: list[str]) -> None:
    with httpx.Client(base_url=front.url, timeout=30) as client:
        for task_id in ids:
            body = wait_done(client, task_id, timeout=180)
            assert body["status"] == "completed", body
            assert sum(body["result"].values()) == 100


def test_remote_sigkilled_and_restarted_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, remote: ServerProcess
) -> None:
    front = ServerProcess(tmp_path / "a", workers=1, env=remote_env(remote.url))
    front.start()
    try:
        ids = _submit_batch(front.url, TASKS)
        _wait_until(lambda: remote.task_count() == TASKS, 60, "every task submitted to B")
        remote.kill_tree()
        at_kill = _statuses(remote)
        assert at_kill["completed"] < TASKS, f"B finished before the kill: {at_kill}"
        remote.start()
        _check_all_completed(front, ids)
        # One task on B per task of A (idempotency keys), and each completed once on A.
        assert remote.task_count() == TASKS
        # A's completion line comes just after the completion it reports: the last may trail.
        _wait_until(lambda: _completions(front).keys() >= set(ids), 10, "every completion line")
        assert _completions(front) == Counter(dict.fromkeys(ids, 1))
        print(f"B at the kill: {dict(at_kill)}; after restart all {TASKS} completed on A")
    finally:
        _stop(front)


def test_front_sigkilled_mid_poll_loses_and_duplicates_nothing(
    tmp_path: Path, remote: ServerProcess
) -> None:
    front = ServerProcess(tmp_path / "a", workers=1, env=remote_env(remote.url))
    front.start()
    try:
        ids = _submit_batch(front.url, TASKS)
        _wait_until(lambda: _completions(front), 60, "the first completion on A")
        front.kill_tree()
        done_before = _statuses(front)["completed"]
        assert done_before < TASKS, "A finished before the kill"
        front.start()
        _check_all_completed(front, ids)
        assert remote.task_count() == TASKS
        # Lines the killed process had not flushed are lost, so some completions may be
        # missing from the log; none may appear twice.
        assert max(_completions(front).values()) == 1
        print(f"A at the kill: {done_before} completed; after restart all {TASKS} completed")
    finally:
        _stop(front)


def test_remote_down_past_remote_timeout_ends_the_task_in_error_saying_so(
    tmp_path: Path, remote: ServerProcess
) -> None:
    front = ServerProcess(
        tmp_path / "a", workers=1, env=remote_env(remote.url, remote_timeout_s="3")
    )
    front.start()
    try:
        slow = slow_circuit(20, 20)  # seconds on B: still running when B is killed
        response = httpx.post(
            f"{front.url}/tasks", json={"qc": slow, "shots": 10, "backend": "remote"}, timeout=30
        )
        task_id = response.json()["task_id"]
        _wait_until(lambda: remote.task_count() == 1, 60, "the task submitted to B")
        remote.kill_tree()
        assert _statuses(remote)["completed"] == 0
        with httpx.Client(base_url=front.url, timeout=30) as client:
            body = wait_done(client, task_id, timeout=60)
        assert body["status"] == "error"
        assert "did not finish the task within its remote_timeout_s of 3 s" in body["message"]
        assert "cannot be reached" in body["message"]
    finally:
        _stop(front)


def test_front_killed_between_remote_accept_and_store_gets_the_same_remote_task(
    tmp_path: Path, remote: ServerProcess
) -> None:
    env = remote_env(remote.url)
    front = ServerProcess(
        tmp_path / "a", workers=1, env={**env, "QTASK_FAULT_EXIT_AFTER_REMOTE_SUBMIT": "1"}
    )
    front.start()
    try:
        response = httpx.post(
            f"{front.url}/tasks",
            json={"qc": MEDIUM, "shots": 100, "seed": 3, "backend": "remote"},
            timeout=30,
        )
        task_id = response.json()["task_id"]
        assert front.process is not None
        front.process.wait(60)  # it killed itself after B accepted, before storing the job
        assert remote.task_count() == 1
        assert front.stored_status(task_id) == "running"
        front.kill_tree()
        front.env = env
        front.start()
        _check_all_completed(front, [task_id])
        assert remote.task_count() == 1  # the redelivery got the same task on B
    finally:
        _stop(front)
