"""End to end: the real `qtask serve`, killed with SIGKILL mid-run, restarted, nothing lost."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from qtask_testkit import BELL, ServerProcess, ghz, slow_circuit, submit, wait_done

# A circuit of ~0.3 s on one core; 60 of them keep two workers busy for ~9 s, well past the
# moment the test kills the service (~3 s after the first submission).
MEDIUM = slow_circuit(18, 14)


def _statuses(client: httpx.Client, ids: list[str]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for task_id in ids:
        status = client.get(f"/tasks/{task_id}").json()["status"]
        tally[status] = tally.get(status, 0) + 1
    return tally


def test_sigkill_of_whole_tree_mid_run_loses_no_task(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    expected: dict[str, tuple[int, int]] = {}  # task id -> (qubits, shots)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(300):
            if i % 10 == 0:  # 30 of 18 qubits: the kill comes while they run
                expected[submit(client, MEDIUM, shots=200)] = (18, 200)
            elif i % 2:
                expected[submit(client, BELL)] = (2, 1024)
            else:
                expected[submit(client, ghz(6), shots=500)] = (6, 500)
        ids = list(expected)
        time.sleep(1.0)
        before = _statuses(client, ids)
    server.kill_tree()
    # Every process of the tree is gone: the children die with their parent.
    deadline = time.monotonic() + 10
    while server.group_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.group_alive() == []
    assert before.get("completed", 0) < len(ids), "the kill came too late to test anything"

    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for task_id, (qubits, shots) in expected.items():
                body = wait_done(client, task_id, timeout=120)
                assert body["status"] == "completed", body
                counts = body["result"]
                assert sum(counts.values()) == shots
                assert all(len(key) == qubits and set(key) <= {"0", "1"} for key in counts)
    finally:
        server.terminate()
    assert '"event": "tasks_recovered"' in server.log() or before.get("pending", 0) == 0
    print(f"before the kill: {before}; after restart: all {len(ids)} completed")


def test_poison_circuit_fails_after_bounded_retries_and_blocks_nothing(tmp_path: Path) -> None:
    marker = "// poison-pill"
    server = ServerProcess(tmp_path / "data", env={"QTASK_FAULT_CRASH_MARKER": marker})
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            poison = submit(client, f"{marker}\n{BELL}")
            others = [submit(client, BELL) for _ in range(30)]
            body = wait_done(client, poison, timeout=60)
            assert body["status"] == "error"
            assert "3 attempts" in body["message"]
            assert "SIGKILL" in body["message"]
            for task_id in others:
                assert wait_done(client, task_id)["status"] == "completed"
            # The service is still whole: its worker processes were replaced.
            assert client.get("/ready").status_code == 200
    finally:
        server.terminate()


def test_task_timeout_stops_the_run_and_the_service_goes_on(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", workers=1, env={"QTASK_WORKER__TASK_TIMEOUT_S": "1"})
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            slow = submit(client, slow_circuit(22, 20))  # ~20 s of simulation
            started = time.monotonic()
            body = wait_done(client, slow, timeout=30)
            assert body["status"] == "error"
            assert "limit of 1 s" in body["message"]
            assert time.monotonic() - started < 10
            # The only worker process was killed and replaced; new work runs at once.
            assert wait_done(client, submit(client, BELL), timeout=15)["status"] == "completed"
    finally:
        server.terminate()


def test_sigterm_lets_running_task_finish_and_keeps_the_queue(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", workers=1)
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        running = submit(client, slow_circuit(20, 10))  # ~2.5 s
        time.sleep(0.5)
        queued = [submit(client, slow_circuit(20, 10)) for _ in range(2)]
        assert server.terminate(timeout=60) == 0
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            # The running task finished before the service stopped: it is complete at once.
            assert client.get(f"/tasks/{running}").json()["status"] == "completed"
            for task_id in queued:
                assert wait_done(client, task_id, timeout=60)["status"] == "completed"
    finally:
        server.terminate()
