"""Chaos in distributed mode: real Redis, NATS JetStream and S3 servers, real `qtask api`,
`qtask worker` and `qtask poller` processes. Each test asserts that every accepted task
completes, with exactly one result."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from qtask.domain.object_keys import result_key
from qtask_testkit import BELL, ghz, slow_circuit, submit, wait_done
from servers import DistributedDeployment, RoleProcess

MEDIUM = slow_circuit(16, 10)  # ~0.1 s of simulation


def _check_all_completed(
    client: httpx.Client, expected: dict[str, tuple[int, int]], timeout: float = 120
) -> None:
    for task_id, (qubits, shots) in expected.items():
        body = wait_done(client, task_id, timeout=timeout)
        assert body["status"] == "completed", (task_id, body)
        counts = body["result"]
        assert sum(counts.values()) == shots
        assert all(len(key) == qubits for key in counts)


def _result_object(deployment: DistributedDeployment, task_id: str) -> dict[str, object]:
    path = deployment.s3.dir / "data" / "qtask" / result_key(task_id)
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def _wait_redelivery(
    deployment: DistributedDeployment, task_ids: list[str], timeout: float
) -> float:
    """Return the monotonic time at which one of the tasks started its second attempt."""
    import redis

    client = redis.Redis.from_url(deployment.redis.url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for task_id in task_ids:
                if int(client.hget(f"qtask:task:{task_id}", "attempts") or 0) >= 2:
                    return time.monotonic()
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError("no task was redelivered")


def _submit_mix(client: httpx.Client, count: int) -> dict[str, tuple[int, int]]:
    expected: dict[str, tuple[int, int]] = {}
    for i in range(count):
        if i % 4 == 0:
            expected[submit(client, MEDIUM, shots=200)] = (16, 200)
        elif i % 2:
            expected[submit(client, BELL)] = (2, 1024)
        else:
            expected[submit(client, ghz(5), shots=300)] = (5, 300)
    return expected


@pytest.fixture
def deployment(tmp_path: Path) -> DistributedDeployment:
    """A fresh deployment per test (servers and roles are stopped by the test's finalizer)."""
    return DistributedDeployment(tmp_path / "d")


def test_killed_worker_task_completes_on_another(deployment: DistributedDeployment) -> None:
    deployment.start()
    try:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            # Two slow tasks (~2 s each) keep both single-process workers busy; the one that
            # runs the first of them is killed mid-run.
            slow = [submit(client, slow_circuit(21, 12)) for _ in range(2)]
            victim = deployment.worker_running(slow[0], timeout=30)
            killed_at = time.monotonic()
            victim.kill()
            redelivered_after = _wait_redelivery(deployment, slow, timeout=60) - killed_at
            print(f"redelivered {redelivered_after:.1f} s after SIGKILL (ack_wait 3 s)")
            assert redelivered_after < 20
            for task_id in slow:
                body = wait_done(client, task_id, timeout=90)
                assert body["status"] == "completed", body
                assert sum(body["result"].values()) == 1024
                # The stored result object is the one the API serves: one result per task.
                assert _result_object(deployment, task_id)["result"] == body["result"]
            recovered_after = time.monotonic() - killed_at
            print(f"both tasks completed {recovered_after:.1f} s after the worker was killed")
            survivor = next(w for w in deployment.workers if w is not victim)
            [finished] = _finished_lines([survivor], 1)
            assert finished >= 1
    finally:
        deployment.terminate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_nats_restart_mid_load_loses_nothing(
    deployment: DistributedDeployment, sig: signal.Signals
) -> None:
    deployment.start()
    try:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            expected = _submit_mix(client, 120)
            deployment.nats.stop(sig)
            # While NATS is down the API still accepts durably; the reconciler publishes later.
            expected.update(_submit_mix(client, 20))
            time.sleep(1.0)
            deployment.nats.start()
            expected.update(_submit_mix(client, 20))
            _check_all_completed(client, expected)
            print(f"NATS {sig.name}: {len(expected)} tasks, all completed")
    finally:
        deployment.terminate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_redis_restart_mid_load_loses_nothing(
    deployment: DistributedDeployment, sig: signal.Signals
) -> None:
    deployment.start()
    try:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            expected = _submit_mix(client, 120)
            deployment.redis.restart(sig)
            expected.update(_submit_mix(client, 40))
            _check_all_completed(client, expected)
            print(f"Redis {sig.name}: {len(expected)} tasks, all completed")
    finally:
        deployment.terminate()


def test_api_killed_between_store_and_publish(deployment: DistributedDeployment) -> None:
    deployment.start()
    try:
        deployment.start_api(env={"QTASK_FAULT_EXIT_AFTER_STORE": "1"})
        deployment.wait_ready()
        headers = {"Idempotency-Key": "chaos-store-then-die"}
        with (
            httpx.Client(base_url=deployment.url, timeout=30) as client,
            pytest.raises(httpx.HTTPError),
        ):
            client.post("/tasks", json={"qc": BELL}, headers=headers)
        assert deployment.task_count() == 1  # stored, then the API died before publishing
        deployment.start_api()
        deployment.wait_ready()
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            # The client retries with the same key: same task, nothing new created.
            response = client.post("/tasks", json={"qc": BELL}, headers=headers)
            assert response.status_code == 202
            task_id = response.json()["task_id"]
            assert deployment.task_count() == 1
            body = wait_done(client, task_id, timeout=60)
            assert body["status"] == "completed"
    finally:
        deployment.terminate()


def _finished_lines(workers: list[RoleProcess], total: int, timeout: float = 10) -> list[int]:
    """Each worker's task_finished lines, once they add up to `total` (or at the timeout). A
    worker logs the line after storing the completion (then it deletes the pending objects and
    acks), so the last lines can trail what the API already shows."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [worker.log().count('"event": "task_finished"') for worker in workers]
        if sum(counts) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_three_workers_share_the_load(tmp_path: Path) -> None:
    deployment = DistributedDeployment(tmp_path / "d", workers=3)
    deployment.start()
    try:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            expected = {submit(client, MEDIUM, shots=100): (16, 100) for _ in range(60)}
            _check_all_completed(client, expected)
        per_worker = _finished_lines(deployment.workers, 60)
        print(f"tasks per worker: {per_worker}")
        assert sum(per_worker) == 60
        assert all(count > 0 for count in per_worker)
    finally:
        deployment.terminate()


def test_poison_task_is_dead_lettered_after_bounded_deliveries(tmp_path: Path) -> None:
    marker = "// poison-pill"
    deployment = DistributedDeployment(tmp_path / "d", env={"QTASK_FAULT_CRASH_MARKER": marker})
    deployment.start()
    try:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            poison = submit(client, f"{marker}\n{BELL}")
            others = {submit(client, BELL): (2, 1024) for _ in range(20)}
            body = wait_done(client, poison, timeout=90)
            assert body["status"] == "error"
            assert "3 attempts" in body["message"]
            _check_all_completed(client, others)
        import redis

        records = redis.Redis.from_url(deployment.redis.url).lrange("qtask:dead", 0, -1)
        dead = [json.loads(record) for record in records]
        assert [record["task_id"] for record in dead] == [poison]
    finally:
        deployment.terminate()
