"""A job end to end on a real mesh (FR-006, FR-008, FR-009, FR-010): `qtask coordinator` and
three `qtask node` processes on loopback.

The nodes: `clean` (no noise, no `ccx`), `distinct` (a noise model of its own, every gate) and
`noisy` (so noisy its measured fidelity marks it degraded). A circuit with `ccx` can only run on
`distinct`, and its counts must equal that node's own noise model run by this test at the same
seed, so they cannot have come from anywhere else."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from meshcoord import CoordinatorProcess
from meshkit import MeshProcess, node_process, start_all
from qtask.circuits.ingest import Limits
from qtask.circuits.ingestor import limits_from
from qtask.config import LimitsSettings
from qtask.mesh.ir import ir_from_qasm
from qtask.mesh.noise import simulate
from qtask.mesh.protocol import NoiseSpec

CLEAN_GATES = ("h", "x", "cx", "rz", "ry", "measure", "barrier")
DISTINCT = {"depolarizing_1q": 0.013, "depolarizing_2q": 0.037, "readout": 0.021}
NOISY = {"depolarizing_1q": 0.3, "depolarizing_2q": 0.5, "readout": 0.3}
GHZ_CCX = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\n'
    "h q[0];\ncx q[0], q[1];\ncx q[1], q[2];\nccx q[0], q[1], q[2];\nc = measure q;\n"
)
BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
LIMITS: Limits = limits_from(LimitsSettings())


def slow_circuit(qubits: int, layers: int) -> str:
    """An entangling circuit that takes the ideal simulator a second or more."""
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"qubit[{qubits}] q;", f"bit[{qubits}] c;"]
    for layer in range(layers):
        lines += [f"ry({0.1 + 0.01 * (layer + i)}) q[{i}];" for i in range(qubits)]
        lines += [f"cx q[{i}], q[{i + 1}];" for i in range(layer % 2, qubits - 1, 2)]
    lines.append("c = measure q;")
    return "\n".join(lines) + "\n"


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator = CoordinatorProcess(
            root / "coordinator",
            {"QTASK_MESH__COORDINATOR__PLAN_WAIT_S": "8",
             "QTASK_MESH__COORDINATOR__PING_TIMEOUT_S": "0.5"},
        ).start()  # fmt: skip
        options: dict[str, dict[str, Any]] = {
            "clean": {"gates": list(CLEAN_GATES), "max_qubits": 24},
            "distinct": {"noise": DISTINCT},
            "noisy": {"noise": NOISY},
        }
        started = start_all(
            [
                node_process(root / "nodes", name, bootstrap=[self.coordinator.addr], **extra)
                for name, extra in options.items()
            ]
        )
        self.nodes: dict[str, MeshProcess] = dict(zip(options, started, strict=True))
        self.names = {node.peer_id: name for name, node in self.nodes.items()}

    def nodes_listed(self, **params: Any) -> dict[str, dict[str, Any]]:
        listed = self.coordinator.get("/api/v1/nodes", **params)["nodes"]
        return {self.names.get(n["node_id"], n["node_id"]): n for n in listed}

    def submit(self, qasm: str, **body: Any) -> str:
        response = httpx.post(
            f"{self.coordinator.url}/api/v1/circuits/submit",
            json={"qasm": qasm, **body},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.coordinator.get(f"/api/v1/jobs/{job_id}"))

    def until(self, job_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (body := self.job(job_id))["state"] not in states:
            if time.monotonic() > deadline:
                raise AssertionError(f"job still {body['state']} after {timeout} s: {body}")
            time.sleep(0.02)
        return body

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
        self.coordinator.kill()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    built = Mesh(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while len(built.nodes_listed(available="true")) < 3:
            assert time.monotonic() < deadline, built.nodes_listed()
            time.sleep(0.05)
        yield built
    finally:
        built.close()


def test_a_ccx_job_runs_on_the_only_capable_healthy_node_with_its_noise(mesh: Mesh) -> None:
    listed = mesh.nodes_listed()
    assert listed["noisy"]["degraded"][0].startswith("fidelity ")
    assert set(mesh.nodes_listed(gate="ccx")) == {"distinct", "noisy"}

    started = time.monotonic()
    job_id = mesh.submit(GHZ_CCX, shots=2000, seed=1234)
    states = []
    with connect(f"ws://127.0.0.1:{mesh.coordinator.port}/api/v1/jobs/{job_id}/ws") as ws:
        for message in ws:
            states.append(json.loads(message)["state"])
    elapsed = time.monotonic() - started
    body = mesh.job(job_id)
    assert body["state"] == "COMPLETED", body
    assert states[-1] == "COMPLETED"
    assert states == sorted(set(states), key=states.index)  # each state once, in order
    [fragment] = body["fragments"]
    assert mesh.names[fragment["node"]] == "distinct"
    expected = simulate(ir_from_qasm(GHZ_CCX, LIMITS), NoiseSpec(**DISTINCT), 2000, 1234)
    assert body["counts"] == expected
    assert len(expected) > 2  # the noise shows: not just 000 and 111
    [done] = [e for e in mesh.coordinator.lines() if e.get("event") == "mesh_fragment_completed"]
    assert (done["job_id"], done["fragment_id"]) == (job_id, fragment["fragment_id"])
    assert done["attempt"] == 1
    run_s = fragment["end"] - fragment["start"]
    print(f"\nccx job: submit to COMPLETED {elapsed * 1000:.0f} ms over the websocket; "
          f"execute round trip {run_s * 1000:.0f} ms; states seen {states}")  # fmt: skip


def test_a_job_nobody_can_run_fails_naming_the_missing_gate(mesh: Mesh) -> None:
    mesh.nodes["distinct"].kill()
    deadline = time.monotonic() + 10
    while "distinct" in mesh.nodes_listed(available="true"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    body = mesh.until(mesh.submit(GHZ_CCX, shots=100), {"COMPLETED", "FAILED"}, timeout=60)
    assert body["state"] == "FAILED"
    assert body["error"] == "no available node offers `ccx`"


def test_a_hung_node_turns_degraded_by_pings_and_is_avoided(mesh: Mesh) -> None:
    clean = mesh.nodes["clean"]
    assert clean.process is not None
    os.kill(clean.process.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        deadline = stopped + 6  # within the advert TTL: the pings notice it, not the TTL
        while not mesh.nodes_listed()["clean"]["degraded"]:
            assert time.monotonic() < deadline, mesh.nodes_listed()["clean"]
            time.sleep(0.05)
        noticed = time.monotonic() - stopped
        print(f"\nSIGSTOPped node degraded after {noticed * 1000:.0f} ms: "
              f"{mesh.nodes_listed()['clean']['degraded']}")  # fmt: skip
        body = mesh.until(mesh.submit(BELL, shots=100, seed=5), {"COMPLETED", "FAILED"})
        assert body["state"] == "COMPLETED"
        assert mesh.names[body["fragments"][0]["node"]] == "distinct"
        # FR-008: the link reports that showed it, and the nodes' own fidelity reports, are
        # in the coordinator's database with their timestamps.
        with sqlite3.connect(mesh.coordinator.directory / "mesh.db") as db:
            kinds = dict(db.execute(
                "SELECT kind, COUNT(*) FROM quality_reports WHERE node_id = ? GROUP BY kind",
                (clean.peer_id,),
            ).fetchall())  # fmt: skip
            slow = db.execute(
                "SELECT COUNT(*) FROM quality_reports WHERE node_id = ? AND latency_ms >= 500",
                (clean.peer_id,),
            ).fetchone()[0]
        assert kinds["fidelity"] >= 1
        assert kinds["link"] >= 1
        assert slow >= 1
    finally:
        os.kill(clean.process.pid, signal.SIGCONT)


def test_a_coordinator_killed_mid_job_finishes_the_job_after_a_restart(mesh: Mesh) -> None:
    qasm = slow_circuit(21, 12)  # only `clean` is healthy and cheap: ~1-3 s of Aer there
    job_id = mesh.submit(qasm, shots=500, seed=99, constraints={"min_fidelity": 0.99})
    mesh.until(job_id, {"EXECUTING"}, timeout=30)
    mesh.coordinator.kill()
    killed = time.monotonic()
    restarted = CoordinatorProcess(mesh.coordinator.directory, mesh.coordinator.env)
    mesh.coordinator = restarted.start()
    body = mesh.until(job_id, {"COMPLETED", "FAILED"}, timeout=90)
    print(f"\ncoordinator SIGKILLed mid-job: job COMPLETED {time.monotonic() - killed:.1f} s "
          "after the kill, restart included")  # fmt: skip
    assert body["state"] == "COMPLETED", body
    attempts = [(f["attempt"], f["status"], mesh.names[f["node"]]) for f in body["fragments"]]
    assert attempts == [(1, "abandoned", "clean"), (2, "completed", "clean")]
    assert body["counts"] == simulate(ir_from_qasm(qasm, LIMITS), NoiseSpec(), 500, 99)
    assert restarted.wait_for("mesh_jobs_recovered")["count"] == 1


def test_sigterm_stops_the_coordinator_cleanly(mesh: Mesh) -> None:
    assert mesh.coordinator.terminate(timeout=20) == 0
    assert mesh.coordinator.wait_for("coordinator_stopped", timeout=1)
