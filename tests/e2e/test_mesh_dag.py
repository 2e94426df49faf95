"""Mesh part 2 on real processes: a coordinator and `qtask node`s run a three-fragment DAG
with state hand-off (tests/mesh_plans.py's split: two parallel halves joined by a third
fragment), survive a node SIGKILLed mid-fragment, a latency spike past the execute timeout and
a fidelity drop by falling back, fail with the fragment's error when retries run out, and
resume after a coordinator SIGKILL from the last completed fragment (FR-006, FR-007, FR-010)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from qiskit import QuantumCircuit, qasm2
from qiskit.quantum_info import Statevector, hellinger_fidelity

from meshcoord import CoordinatorProcess
from meshkit import TESTS, MeshProcess, mesh_client, node_process, start_all
from qtask.mesh.host import call
from qtask.mesh.protocol import FAULT_PROTOCOL, FaultReply, FaultRequest

# Hand-off timeouts short enough to see a latency spike; link latency never degrades a node
# here (the fault layer delays pings too), so fallbacks come from the runtime, not the pinger.
COORDINATOR = {
    "QTASK_MESH__COORDINATOR__PLANNER_HOOK": "mesh_plans:split_halves",
    "QTASK_MESH__COORDINATOR__PLAN_WAIT_S": "10",
    "QTASK_MESH__COORDINATOR__EXECUTE_TIMEOUT_S": "2.0",
    "QTASK_MESH__COORDINATOR__TRANSFER_TIMEOUT_S": "0.5",
    "QTASK_MESH__COORDINATOR__RESERVE_TIMEOUT_S": "2.0",
    "QTASK_MESH__COORDINATOR__MAX_ATTEMPTS": "2",
    "QTASK_MESH__COORDINATOR__PING_TIMEOUT_S": "5",
    "QTASK_MESH__COORDINATOR__DEGRADED_LATENCY_MS": "60000",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
}
SHOTS = 4000


def circuit(wrong: bool = False) -> QuantumCircuit:
    """4 qubits: two entangled halves, then gates across them (`wrong` drops one)."""
    qc = QuantumCircuit(4, 4)
    qc.h(0)
    qc.cx(0, 1)
    qc.ry(0.4, 1)
    qc.h(2)
    qc.rx(0.9, 3)
    qc.cx(2, 3)
    if not wrong:
        qc.cx(1, 2)
    qc.rz(0.5, 0)
    qc.h(1)
    qc.h(3)
    qc.ry(0.3, 2)
    qc.measure(range(4), range(4))
    return qc


def exact(qc: QuantumCircuit) -> dict[str, float]:
    """The ideal distribution of the measured circuit (little-endian keys, as Aer's)."""
    probabilities = Statevector(qc.remove_final_measurements(inplace=False)).probabilities_dict()
    return {k: float(v) for k, v in probabilities.items() if v > 1e-12}


# Hellinger fidelity of 4,000 shots of a 16-outcome distribution with its own exact
# distribution is ~0.9995 (1 - F ~ 15/(8·4000)); dropping one cx gives 0.92: 0.99 tells them apart.
BOUND = 0.99


class DagMesh:
    """A coordinator with the split planner and nodes whose widths pick the route."""

    def __init__(
        self, root: Path, nodes: dict[str, dict[str, Any]], env: dict[str, str] = COORDINATOR
    ) -> None:
        self.root = root
        self.coordinator = CoordinatorProcess(root / "coordinator", env).start()
        started = start_all([
            node_process(root / "nodes", name, bootstrap=[self.coordinator.addr],
                         capacity=1, faults_enabled=True, **extra)
            for name, extra in nodes.items()
        ])  # fmt: skip
        self.nodes: dict[str, MeshProcess] = dict(zip(nodes, started, strict=True))
        self.names = {node.peer_id: name for name, node in self.nodes.items()}
        deadline = time.monotonic() + 30
        while len(self.coordinator.get("/api/v1/nodes", available="true")["nodes"]) < len(nodes):
            assert time.monotonic() < deadline, self.coordinator.get("/api/v1/nodes")
            time.sleep(0.05)

    def submit(self, qc: QuantumCircuit, **body: Any) -> str:
        response = httpx.post(
            f"{self.coordinator.url}/api/v1/circuits/submit",
            json={"qasm": qasm2.dumps(qc), "shots": SHOTS, "seed": 11, **body},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.coordinator.get(f"/api/v1/jobs/{job_id}"))

    def until(self, job_id: str, done: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not done(body := self.job(job_id)):
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached in {timeout} s: {body}")
            time.sleep(0.02)
        return body

    def finished(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.until(job_id, lambda b: b["state"] in ("COMPLETED", "FAILED"), timeout)

    def attempts(self, body: dict[str, Any], fragment: str) -> list[tuple[int, str, str]]:
        return [
            (f["attempt"], f["status"], self.names[f["node"]])
            for f in body["fragments"]
            if f["fragment_id"] == f"{body['job_id']}.{fragment}"
        ]

    def executed(self, name: str, fragment_id: str) -> int:
        """How many EXECUTEs of `fragment_id` the node ran."""
        return sum(
            1
            for e in self.nodes[name].lines()
            if e.get("event") == "fragment_executed" and e.get("fragment_id") == fragment_id
        )

    def fault(self, name: str, **fields: Any) -> FaultReply:
        node = self.nodes[name]

        async def send() -> FaultReply:
            async with mesh_client(bootstrap=[node.addr]) as client:
                return await call(client, node.peer_id, FAULT_PROTOCOL,
                                  FaultRequest(**fields), FaultReply, 10)  # fmt: skip

        return asyncio.run(send())

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
        self.coordinator.kill()


# Widths pick the route (mesh_plans.split_halves): `a` and `b` take the 2-qubit halves, `c`
# the 4-qubit join, `d` (5 qubits) is the join's only fallback.
HALVES = {"a": {"max_qubits": 2}, "b": {"max_qubits": 2}, "c": {"max_qubits": 4}}


@pytest.fixture
def dag_mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DagMesh]:
    nodes = {name: dict(extra) for name, extra in HALVES.items()}
    for name, extra in getattr(request, "param", {}).items():
        nodes[name] = {**nodes.get(name, {}), **extra}
    built = DagMesh(tmp_path, nodes)
    try:
        yield built
    finally:
        built.close()


def test_a_three_fragment_dag_on_three_nodes_gives_the_whole_circuits_counts(
    dag_mesh: DagMesh,
) -> None:
    body = dag_mesh.finished(dag_mesh.submit(circuit()))
    assert body["state"] == "COMPLETED", body
    route = {r["fragment_id"].rsplit(".", 1)[1]: dag_mesh.names[r["node"]]
             for r in body["metadata"]["route"]}  # fmt: skip
    # The halves on the two 2-qubit nodes (ordered by peer id), the join on the 4-qubit one.
    assert {route["f0"], route["f1"]} == {"a", "b"}
    assert route["f2"] == "c"
    counts = body["counts"]
    assert sum(counts.values()) == SHOTS
    fidelity = hellinger_fidelity(counts, exact(circuit()))
    wrong = hellinger_fidelity(counts, exact(circuit(wrong=True)))
    print(f"\nHellinger fidelity vs exact: {fidelity:.5f}; vs the wrong circuit {wrong:.5f}")
    assert fidelity >= BOUND
    assert wrong < BOUND  # the bound tells a different circuit apart
    # Both halves' states travelled to the join; each node ran its own fragment once.
    transfers = {t["fragment_id"].rsplit(".", 1)[1]: t for t in body["metadata"]["transfers"]}
    assert transfers["f0"]["bytes_out"] > 0
    assert transfers["f1"]["bytes_out"] > 0
    assert transfers["f2"]["bytes_in"] > 0
    for fragment, name in route.items():
        assert dag_mesh.executed(name, f"{body['job_id']}.{fragment}") == 1


def test_the_planners_gate_level_dag_on_three_gate_limited_nodes_matches_the_whole_circuit(
    tmp_path: Path,
) -> None:
    """No hook: qtask.mesh.planner cuts the circuit where each node's gate set ends (8
    fragments here: parallel groups joined twice), and the counts are the whole circuit's."""
    env = {k: v for k, v in COORDINATOR.items() if k != "QTASK_MESH__COORDINATOR__PLANNER_HOOK"}
    nodes = {
        "rotations": {"gates": ["h", "ry", "rz", "measure", "barrier"]},
        "entangler": {"gates": ["cx", "barrier"]},
        "prep": {"gates": ["rx", "h", "measure", "barrier"]},
    }
    mesh = DagMesh(tmp_path, nodes, env)
    try:
        body = mesh.finished(mesh.submit(circuit()))
    finally:
        mesh.close()
    assert body["state"] == "COMPLETED", body
    route = [mesh.names[r["node"]] for r in body["metadata"]["route"]]
    print(f"\nplanner's route over {len(route)} fragments: {route}")
    assert len(route) >= 3
    assert set(route) == set(nodes)
    assert hellinger_fidelity(body["counts"], exact(circuit())) >= BOUND


@pytest.mark.parametrize(
    "dag_mesh", [dict(c={"faults": {"latency_ms": 1500}}, d={"max_qubits": 5})], indirect=True
)
def test_a_node_sigkilled_mid_fragment_is_survived_on_the_fallback(dag_mesh: DagMesh) -> None:
    job_id = dag_mesh.submit(circuit())
    dag_mesh.until(job_id, lambda b: ("f2", "executing") in {
        (f["fragment_id"].rsplit(".", 1)[1], f["status"]) for f in b["fragments"]})  # fmt: skip
    dag_mesh.nodes["c"].kill()
    body = dag_mesh.finished(job_id)
    assert body["state"] == "COMPLETED", body
    assert dag_mesh.attempts(body, "f2") == [(1, "failed", "c"), (2, "completed", "d")]
    assert hellinger_fidelity(body["counts"], exact(circuit())) >= BOUND


@pytest.mark.parametrize(
    "dag_mesh", [dict(c={"faults": {"latency_ms": 4000}}, d={"max_qubits": 5})], indirect=True
)
def test_a_latency_spike_past_the_timeout_is_survived_on_the_fallback(dag_mesh: DagMesh) -> None:
    body = dag_mesh.finished(dag_mesh.submit(circuit()))
    assert body["state"] == "COMPLETED", body
    attempts = dag_mesh.attempts(body, "f2")
    assert attempts == [(1, "failed", "c"), (2, "completed", "d")]
    [failed] = [f for f in body["fragments"] if f["node"] == dag_mesh.nodes["c"].peer_id]
    assert "Timeout" in failed["error"]
    assert hellinger_fidelity(body["counts"], exact(circuit())) >= BOUND


def test_a_fidelity_drop_below_the_jobs_threshold_is_survived_on_the_fallback(
    tmp_path: Path,
) -> None:
    # The halves' nodes answer each request in 3 s, inside 6 s timeouts: while they execute,
    # the join's planned node degrades, and the coordinator must hear of it before it
    # dispatches the join. (With 1.5 s inside the shared 2 s, a loaded machine once dispatched
    # the join first.)
    timeouts = ("EXECUTE_TIMEOUT_S", "RESERVE_TIMEOUT_S")
    env = {**COORDINATOR, **{f"QTASK_MESH__COORDINATOR__{name}": "6.0" for name in timeouts}}
    slow = {"faults": {"latency_ms": 3000}}
    nodes = {"a": {**HALVES["a"], **slow}, "b": {**HALVES["b"], **slow}, "c": HALVES["c"],
             "d": {"max_qubits": 5}}  # fmt: skip
    mesh = DagMesh(tmp_path, nodes, env)
    try:
        job_id = mesh.submit(circuit(), constraints={"min_fidelity": 0.95})
        mesh.until(job_id, lambda b: any(f["status"] == "executing" for f in b["fragments"]))
        # While the halves run, the join's planned node degrades (re-calibrated, re-advertised).
        reply = mesh.fault("c", extra_depolarizing=0.3)
        assert reply.active["extra_depolarizing"] == 0.3
        c = mesh.nodes["c"].peer_id
        deadline = time.monotonic() + 10
        while c in {
            n["node_id"] for n in mesh.coordinator.get("/api/v1/nodes", min_fidelity=0.95)["nodes"]
        }:
            assert time.monotonic() < deadline, "the coordinator never saw c degraded"
            time.sleep(0.05)
        assert not mesh.attempts(mesh.job(job_id), "f2"), "the join was dispatched first"
        body = mesh.finished(job_id)
    finally:
        mesh.close()
    assert body["state"] == "COMPLETED", body
    f2 = mesh.attempts(body, "f2")
    assert f2[-1][1:] == ("completed", "d")
    assert all(node != "c" or status == "failed" for _, status, node in f2)
    assert hellinger_fidelity(body["counts"], exact(circuit())) >= BOUND


@pytest.mark.parametrize("dag_mesh", [dict(c={"faults": {"latency_ms": 4000}})], indirect=True)
def test_retries_used_up_with_no_fallback_fail_with_the_fragments_error(
    dag_mesh: DagMesh,
) -> None:
    body = dag_mesh.finished(dag_mesh.submit(circuit()))
    assert body["state"] == "FAILED", body
    job_id = body["job_id"]
    assert body["error"].startswith(f"fragment {job_id}.f2 failed 2 times: attempt 1 on ")
    assert "no feasible plan without" in body["error"]
    assert dag_mesh.attempts(body, "f2") == [(1, "failed", "c"), (2, "failed", "c")]


@pytest.mark.parametrize("dag_mesh", [dict(c={"faults": {"latency_ms": 1500}})], indirect=True)
def test_a_coordinator_sigkilled_mid_job_resumes_from_the_last_completed_fragment(
    dag_mesh: DagMesh,
) -> None:
    job_id = dag_mesh.submit(circuit())
    dag_mesh.until(job_id, lambda b: ("f2", "executing") in {
        (f["fragment_id"].rsplit(".", 1)[1], f["status"]) for f in b["fragments"]})  # fmt: skip
    dag_mesh.coordinator.kill()
    restarted = CoordinatorProcess(dag_mesh.coordinator.directory, dag_mesh.coordinator.env)
    dag_mesh.coordinator = restarted.start()
    body = dag_mesh.finished(job_id)
    assert body["state"] == "COMPLETED", body
    assert body["metadata"]["resumed"] == [f"{job_id}.f0", f"{job_id}.f1"]
    # The halves' nodes were not asked again: their output states came from disk.
    halves = [dag_mesh.attempts(body, f) for f in ("f0", "f1")]
    assert sorted(halves) == [[(1, "completed", "a")], [(1, "completed", "b")]]
    for fragment, [(_, _, name)] in zip(("f0", "f1"), halves, strict=True):
        assert dag_mesh.executed(name, f"{job_id}.{fragment}") == 1
    assert dag_mesh.attempts(body, "f2") == [(1, "abandoned", "c"), (2, "completed", "c")]
    assert hellinger_fidelity(body["counts"], exact(circuit())) >= BOUND
