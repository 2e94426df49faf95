"""The task API over real HTTP against a real `qtask serve` process (embedded mode)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from qtask_testkit import (
    BELL,
    ServerProcess,
    ghz,
    slow_circuit,
    submit,
    wait_done,
)
from servers import DistributedDeployment

Deployment = ServerProcess | DistributedDeployment

QASM2_BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)


def test_seed_bell_example_returns_even_counts(client: httpx.Client) -> None:
    response = client.post("/tasks", json={"qc": BELL})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"task_id", "message"}
    assert body["message"] == "Task submitted successfully."
    assert response.headers["location"] == f"/tasks/{body['task_id']}"

    done = wait_done(client, body["task_id"])
    assert set(done) == {"status", "result"}
    assert done["status"] == "completed"
    counts = done["result"]
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 1024
    assert 400 <= counts["00"] <= 624  # 50/50 within ~7 standard deviations


def test_pending_body_is_exact_while_queued(client: httpx.Client) -> None:
    # Submit enough work that the last task is still queued when read.
    ids = [submit(client, ghz(18), shots=20000) for _ in range(6)]
    assert client.get(f"/tasks/{ids[-1]}").json() == {
        "status": "pending",
        "message": "Task is still in progress.",
    }
    for task_id in ids:
        assert wait_done(client, task_id)["status"] == "completed"


def test_quantum_circuit_alias_and_shots(client: httpx.Client) -> None:
    response = client.post("/tasks", json={"quantum_circuit": BELL, "shots": 100})
    assert response.status_code == 202
    done = wait_done(client, response.json()["task_id"])
    assert sum(done["result"].values()) == 100


def test_seeded_runs_are_reproducible(client: httpx.Client) -> None:
    first = [submit(client, ghz(5), shots=333, seed=42) for _ in range(3)]
    results = [wait_done(client, task_id)["result"] for task_id in first]
    assert results[0] == results[1] == results[2]
    assert set(results[0]) == {"00000", "11111"}
    other = wait_done(client, submit(client, ghz(5), shots=333, seed=43))["result"]
    assert other != results[0]


def test_openqasm2_is_accepted(client: httpx.Client) -> None:
    done = wait_done(client, submit(client, QASM2_BELL))
    assert set(done["result"]) == {"00", "11"}


def test_circuits_the_native_parser_refuses_run_via_antlr(client: httpx.Client) -> None:
    source = (
        'OPENQASM 3.0; include "stdgates.inc";\n'
        "gate bell a, b { h a; cx a, b; }\n"
        "qubit[2] q; bit[2] c;\n"
        "rz(pi/2) q[0]; rz(-pi/2) q[0];\n"
        "bell q[0], q[1];\n"
        "c = measure q;\n"
    )
    done = wait_done(client, submit(client, source, seed=7))
    assert set(done["result"]) == {"00", "11"}


def test_circuit_without_measurements_measures_every_qubit(client: httpx.Client) -> None:
    source = 'OPENQASM 3.0; include "stdgates.inc"; qubit[3] q; x q[0]; x q[2];'
    done = wait_done(client, submit(client, source))
    assert done["result"] == {"101": 1024}


def test_unknown_task_is_exact_404(client: httpx.Client) -> None:
    for task_id in ("12345", "00000000-0000-4000-8000-000000000000", "..%2F..%2Fetc%2Fpasswd"):
        response = client.get(f"/tasks/{task_id}")
        assert response.status_code == 404
        assert response.json() == {"status": "error", "message": "Task not found."}


def test_task_ids_are_uuid4_and_not_sequential(client: httpx.Client) -> None:
    import uuid

    ids = [submit(client, BELL) for _ in range(3)]
    assert all(uuid.UUID(task_id).version == 4 for task_id in ids)
    assert len(set(ids)) == 3


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 422, "JSON object"),
        (b"{}", 422, "'qc' is required"),
        (b'{"qc": 5}', 422, "'qc'"),
        (b'{"qc": ""}', 400, "empty"),
        (b'{"qc": "   "}', 400, "empty"),
        (b'{"qc": "OPENQASM 3.0; qubit q;", "shots": 0}', 400, "shots"),
        (b'{"qc": "OPENQASM 3.0; qubit q;", "shots": "many"}', 422, "'shots'"),
        (b'{"qc": "OPENQASM 3.0; qubit q;", "shots": 10000000000}', 400, "shots"),
        (b'{"qc": "OPENQASM 3.0;\\nqubit[2] q;\\nh q[0]\\ncx q[0], q[1];"}', 400, "line 4"),
        (b'{"qc": "OPENQASM 3.0; include \\"/etc/passwd\\"; qubit q;"}', 400, "cannot be included"),
        (b'{"qc": "OPENQASM 3.0; include \\"../x.inc\\"; qubit q;"}', 400, "cannot be included"),
        (
            # Over max_qubits. (40 non-Clifford qubits are admitted: they run with MPS.)
            b'{"qc": "OPENQASM 3.0; qubit[101] q; bit[101] c; U(0.1,0,0) q[0]; c = measure q;"}',
            422,
            "101 qubits; the limit is 100",
        ),
        (b'{"qc": "OPENQASM 3.0; qubit[500] q;"}', 422, "qubits"),
        (b'{"qc": "OPENQASM 9.0; qubit q;"}', 400, "version"),
    ],
)
def test_bad_input_gets_4xx_and_creates_nothing(
    client: httpx.Client, server: Deployment, content: bytes, status: int, fragment: str
) -> None:
    before = server.task_count()
    response = client.post("/tasks", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status", "message"}
    assert body["status"] == "error"
    assert fragment in body["message"]
    assert server.task_count() == before


def test_payload_over_limit_is_413(client: httpx.Client, server: Deployment) -> None:
    before = server.task_count()
    response = client.post("/tasks", json={"qc": "x" * (2 << 20)})
    assert response.status_code == 413
    assert response.json()["status"] == "error"
    assert server.task_count() == before


def test_a_50_mb_body_is_refused_without_reading_it(
    client: httpx.Client, server: Deployment
) -> None:
    before = server.task_count()
    declared = client.post(
        "/tasks",
        content=b'{"qc": "' + b"x" * (50 << 20) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert declared.status_code == 413
    assert "over the limit of 1048576 bytes" in declared.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once 1 MiB has arrived
        yield b'{"qc": "'
        for _ in range(50):
            yield b"x" * (1 << 20)

    chunked = client.post("/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert client.get("/health").status_code == 200
    assert server.task_count() == before


def test_batch_runs_every_task_and_keeps_order(client: httpx.Client) -> None:
    items = [{"qc": BELL, "shots": 100 + i} for i in range(30)]
    items += [{"qc": ghz(4), "shots": 50, "seed": 7}, {"qc": QASM2_BELL, "shots": 64}]
    response = client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["message"] == "Tasks submitted successfully."
    ids = body["task_ids"]
    assert len(set(ids)) == len(items)
    results = [wait_done(client, task_id)["result"] for task_id in ids]
    assert [sum(counts.values()) for counts in results] == [item["shots"] for item in items]
    assert all(set(counts) <= {"00", "11"} for counts in results[:30])
    assert set(results[30]) <= {"0000", "1111"}
    rerun = wait_done(client, submit(client, ghz(4), shots=50, seed=7))["result"]
    assert rerun == results[30]  # a seeded task in a batch runs as it would alone


def test_read_many_tasks_in_one_request(client: httpx.Client) -> None:
    ids = client.post("/tasks/batch", json={"tasks": [{"qc": BELL, "shots": 10}] * 50}).json()
    wanted = ids["task_ids"] + ["not-a-task"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = client.get("/tasks", params={"ids": ",".join(wanted)})
        assert response.status_code == 200
        bodies = response.json()["tasks"]
        if all(body["status"] != "pending" for body in bodies):
            break
        time.sleep(0.05)
    assert [body["task_id"] for body in bodies] == wanted
    assert all(sum(body["result"].values()) == 10 for body in bodies[:-1])
    assert bodies[-1] == {"task_id": "not-a-task", "status": "error", "message": "Task not found."}


def test_batch_with_a_bad_circuit_creates_nothing(client: httpx.Client, server: Deployment) -> None:
    before = server.task_count()
    items = [{"qc": BELL}, {"qc": 'OPENQASM 3.0;\ninclude "/etc/passwd";\n'}, {"qc": BELL}]
    response = client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 400
    assert response.json()["message"].startswith("tasks[1]: ")
    assert server.task_count() == before


_GATE_BOMB = " ".join(
    ["gate g0 a { h a; }"] + [f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}" for i in range(1, 25)]
)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("OPENQASM 3.0; qubit[2147483648] q;", "declares 2147483648 qubits"),
        ('OPENQASM 2.0; include "qelib1.inc"; qreg q[2147483648];', "declares 2147483648 qubits"),
        ("OPENQASM 3.0; qubit[2] q; bit[2000000000] c;", "classical bits"),
        (f'OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; {_GATE_BOMB} g24 q[0];', "Gate 'g17'"),
        (
            'OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; for int i in [0:2**70] { h q[0]; }',
            "",
        ),
    ],
)
def test_size_bombs_are_refused_and_the_api_stays_up(
    client: httpx.Client, server: Deployment, source: str, needle: str
) -> None:
    # Each of these, given to Qiskit's parsers as is, allocates or expands for minutes to hours.
    before = server.task_count()
    response = client.post("/tasks", json={"qc": source}, timeout=15)
    assert 400 <= response.status_code < 500
    assert needle in response.json()["message"]
    assert client.get("/health", timeout=5).status_code == 200
    assert server.task_count() == before


def test_a_cancelled_task_never_runs(client: httpx.Client, server: Deployment) -> None:
    # Occupy both workers, queue Bell tasks behind them, cancel every other one and one of
    # the running blockers.
    cancelled_body = {"status": "error", "message": "Task was cancelled."}
    blockers = [submit(client, slow_circuit(20, 30)) for _ in range(2)]
    queued = [submit(client, BELL) for _ in range(6)]
    deadline = time.monotonic() + 60
    while server.stored_status(blockers[0]) != "running":
        assert time.monotonic() < deadline, "the first blocker never started"
        time.sleep(0.05)
    cancelled, kept = [*queued[::2], blockers[0]], [*queued[1::2], blockers[1]]
    for task_id in cancelled:
        response = client.delete(f"/tasks/{task_id}")
        assert response.status_code == 200
        assert response.json() == cancelled_body
    for task_id in kept:
        assert wait_done(client, task_id)["status"] == "completed"
    # The cancelled blocker ran alone: its process was killed, not left to finish the run.
    deadline = time.monotonic() + 60
    while not _logged(server, "task_finished", task_id=blockers[0], outcome="stopped"):
        assert time.monotonic() < deadline, "the cancelled blocker's run was not stopped"
        time.sleep(0.2)
    for task_id in cancelled:
        assert client.get(f"/tasks/{task_id}").json() == cancelled_body
    ended = client.delete(f"/tasks/{kept[0]}")
    assert ended.status_code == 409
    assert "already ended (completed)" in ended.json()["message"]


def test_metrics_of_a_finished_task(client: httpx.Client, server: Deployment) -> None:
    wait_done(client, submit(client, BELL))
    exposition = [client.get("/metrics").text]
    if isinstance(server, DistributedDeployment):  # the workers count their own runs
        for worker in server.workers:
            port = worker.env["QTASK_WORKER__HEALTH_PORT"]
            answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert answer.status_code == 200
            exposition.append(answer.text)
    text = "\n".join(exposition)
    assert 'qtask_tasks_finished_total{outcome="completed",reason=""}' in text
    assert "qtask_task_run_seconds_count" in text
    assert 'qtask_tasks{status="queued"}' in exposition[0]
    assert "qtask_http_requests_total" in exposition[0]


def test_health_ready_and_docs(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert {"store", "parsers"} <= set(checks)
    assert all(value.startswith("ok") for value in checks.values())
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/tasks" in spec["paths"]
    assert "/tasks/{task_id}" in spec["paths"]


def test_wrong_method_and_path_get_json_errors(client: httpx.Client) -> None:
    response = client.delete("/tasks")
    assert response.status_code == 405
    assert response.json()["status"] == "error"
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["status"] == "error"


def test_large_result_crosses_the_process_pipe_intact(client: httpx.Client) -> None:
    # ~4,000 distinct 16-bit keys: the worker's reply is far larger than a pipe's 64 KiB buffer,
    # so it reaches the server in parts (a non-blocking read of it once failed under uvloop).
    source = 'OPENQASM 3.0; include "stdgates.inc"; qubit[16] q; bit[16] c; h q; c = measure q;'
    done = wait_done(client, submit(client, source, shots=8192, seed=3))
    assert done["status"] == "completed"
    assert sum(done["result"].values()) == 8192
    assert len(done["result"]) > 2000


def _logged(server: Deployment, event: str, **fields: object) -> bool:
    """Whether the server logged a JSON line `event` with these fields."""
    for line in server.log().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
            return True
    return False
