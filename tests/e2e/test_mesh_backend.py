"""The mesh as a backend of the task service: `qtask serve` with `[backends.mesh] type = "mesh"`
sends `POST /tasks {"backend": "mesh"}` to a real `qtask coordinator`, whose node runs it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from meshcoord import CoordinatorProcess
from meshkit import node_process
from qtask.circuits.ingestor import limits_from
from qtask.config import LimitsSettings
from qtask.mesh.ir import ir_from_qasm
from qtask.mesh.noise import simulate
from qtask.mesh.protocol import NoiseSpec
from qtask_testkit import ServerProcess

NOISE = {"depolarizing_1q": 0.011, "depolarizing_2q": 0.029, "readout": 0.017}
BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)


def test_a_task_on_the_mesh_backend_completes_with_the_nodes_counts(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path / "coordinator").start()
    node = node_process(tmp_path / "nodes", "n", bootstrap=[coordinator.addr], noise=NOISE)
    server = ServerProcess(
        tmp_path / "serve",
        workers=1,
        env={
            "QTASK_BACKENDS__MESH__TYPE": "mesh",
            "QTASK_BACKENDS__MESH__URL": coordinator.url,
            "QTASK_BACKENDS__MESH__POLL_INTERVAL_S": "0.2",
        },
    )
    try:
        node.start()
        server.start()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            listed = [b["name"] for b in http.get("/backends").json()["backends"]]
            assert "mesh" in listed
            response = http.post(
                "/tasks", json={"qc": BELL, "shots": 1500, "seed": 21, "backend": "mesh"}
            )
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            deadline = time.monotonic() + 60
            while (body := http.get(f"/tasks/{task_id}").json())["status"] == "pending":
                assert time.monotonic() < deadline, body
                time.sleep(0.1)
        assert body["status"] == "completed", body
        ir = ir_from_qasm(BELL, limits_from(LimitsSettings()))
        assert body["result"] == simulate(ir, NoiseSpec(**NOISE), 1500, 21)
        [job] = [line for line in coordinator.lines() if line.get("event") == "mesh_job_finished"]
        assert job["outcome"] == "completed"
    finally:
        server.kill_tree()
        node.kill()
        coordinator.kill()


def test_deleting_a_mesh_task_cancels_its_job_at_the_coordinator(tmp_path: Path) -> None:
    # No node meets min_fidelity 0.9999: the job waits in RESERVING for one (plan_wait_s).
    coordinator = CoordinatorProcess(
        tmp_path / "coordinator", env={"QTASK_MESH__COORDINATOR__PLAN_WAIT_S": "120"}
    ).start()
    node = node_process(tmp_path / "nodes", "n", bootstrap=[coordinator.addr], noise=NOISE)
    server = ServerProcess(
        tmp_path / "serve",
        workers=1,
        env={
            "QTASK_BACKENDS__MESH__TYPE": "mesh",
            "QTASK_BACKENDS__MESH__URL": coordinator.url,
            "QTASK_BACKENDS__MESH__POLL_INTERVAL_S": "0.2",
            "QTASK_BACKENDS__MESH__MIN_FIDELITY": "0.9999",
        },
    )
    try:
        node.start()
        server.start()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            response = http.post("/tasks", json={"qc": BELL, "shots": 100, "backend": "mesh"})
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            job_id = _logged(coordinator, "mesh_job_submitted")["job_id"]
            # No node meets the fidelity asked: the job waits for a feasible plan (COMPILING).
            state = coordinator.get(f"/api/v1/jobs/{job_id}")["state"]
            assert state in ("QUEUED", "COMPILING"), state
            cancelled = http.delete(f"/tasks/{task_id}")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json() == {"status": "error", "message": "Task was cancelled."}
        assert _logged(coordinator, "mesh_job_cancelled")["job_id"] == job_id
        job = coordinator.get(f"/api/v1/jobs/{job_id}")
        assert (job["state"], job["error"]) == ("FAILED", "cancelled")
    finally:
        server.kill_tree()
        node.kill()
        coordinator.kill()


def _logged(coordinator: CoordinatorProcess, event: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while not (found := [e for e in coordinator.lines() if e.get("event") == event]):
        assert time.monotonic() < deadline, f"the coordinator never logged {event}"
        time.sleep(0.05)
    return found[0]
