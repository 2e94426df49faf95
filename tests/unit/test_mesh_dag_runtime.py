"""The runtime on a fragment DAG with fake nodes that really run their slices in-process
(qtask.mesh.handoff): dependencies first, independent fragments at once, states joined and
handed on, a re-plan without the failed node, and a restart that resumes from the states kept
on disk without asking the earlier fragments' nodes again."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector, hellinger_fidelity

from mesh_plans import split_halves
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.dag import FragmentSpec, JobPlan, StateFiles
from qtask.mesh.handoff import child_run_slice, decode_state
from qtask.mesh.ir import circuit_to_ir
from qtask.mesh.jobs import Fragment, FragmentStatus, Job, JobState
from qtask.mesh.protocol import (
    EXECUTE_PROTOCOL,
    Advert,
    Availability,
    CircuitIR,
    ExecuteReply,
    ExecuteRequest,
    NoiseSpec,
)
from qtask.mesh.registry import Registry, Thresholds
from qtask.mesh.runtime import Runtime
from qtask.mesh.testing import FakeMesh, FakeNode, InMemoryMeshStore

FAST = CoordinatorSettings(
    plan_wait_s=0.0, backoff_base_s=0.001, backoff_max_s=0.002, max_attempts=2
)
GATES = ("h", "cx", "ry", "rx", "rz", "measure")


def circuit() -> QuantumCircuit:
    qc = QuantumCircuit(4, 4)
    qc.h(0)
    qc.cx(0, 1)
    qc.ry(0.4, 1)
    qc.h(2)
    qc.rx(0.9, 3)
    qc.cx(2, 3)
    qc.cx(1, 2)
    qc.h(1)
    qc.measure(range(4), range(4))
    return qc


def exact() -> dict[str, float]:
    probabilities = Statevector(circuit().remove_final_measurements(inplace=False))
    return {k: float(v) for k, v in probabilities.probabilities_dict().items()}


def advert(node: str, max_qubits: int) -> Advert:
    now = time.time()
    return Advert(
        node_id=node, gates=GATES, qubit_range=(1, max_qubits), fidelity=0.99,
        fidelity_measured_at=now, noise=NoiseSpec(), availability=Availability.AVAILABLE,
        capacity=2, in_use=0, timestamp=now, seq=1,
    )  # fmt: skip


class Rig:
    def __init__(self, root: Path, plan_job: object = split_halves) -> None:
        self.store = InMemoryMeshStore()
        self.registry = Registry(Thresholds(ttl_s=60))
        self.mesh = FakeMesh()
        self.states = StateFiles(root / "states")
        self.runtime = Runtime(self.store, self.registry, self.mesh, FAST,
                               lambda _: circuit_to_ir(circuit()), states=self.states,
                               plan_job=plan_job)  # type: ignore[arg-type]  # fmt: skip
        self.order: list[str] = []

    def node(self, node_id: str, max_qubits: int, **kwargs: object) -> FakeNode:
        self.registry.upsert(advert(node_id, max_qubits), time.time())
        fake = FakeNode(node_id, execute=self._slicer(node_id), **kwargs)  # type: ignore[arg-type]
        return self.mesh.add(fake)

    def _slicer(self, node_id: str):  # type: ignore[no-untyped-def]
        async def run(request: ExecuteRequest) -> ExecuteReply:
            self.order.append(f"start {request.fragment_id.rsplit('.', 1)[1]}")
            await asyncio.sleep(0.05)  # both halves are in flight together
            counts, state, run_s = child_run_slice(
                request.circuit, NoiseSpec(), request.shots, request.seed,
                request.input_state, request.return_state,
            )  # fmt: skip
            self.order.append(f"end {request.fragment_id.rsplit('.', 1)[1]}")
            return ExecuteReply(
                ok=True, correlation_id=request.correlation_id, node_id=node_id,
                counts=counts, state=state, run_s=run_s,
            )  # fmt: skip

        return run

    def executed(self, node_id: str) -> list[str]:
        return [r.fragment_id for p, r in self.mesh.nodes[node_id].requests
                if p == EXECUTE_PROTOCOL]  # fmt: skip

    async def finished(self, job_id: str) -> Job:
        async with asyncio.timeout(20):
            while not (job := self.runtime.job(job_id)).state.terminal:
                await self.runtime.wait(job_id, 1.0)
        return job


async def test_a_dag_runs_halves_in_parallel_then_the_join_and_matches_the_whole_circuit(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    for name, width in (("a", 2), ("b", 2), ("c", 4)):
        rig.node(name, width)
    job = await rig.runtime.submit("qasm", 4000, 7, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED, done.error
    assert rig.order[:2] == ["start f0", "start f1"] or rig.order[:2] == ["start f1", "start f0"]
    assert rig.order[-2:] == ["start f2", "end f2"]
    assert hellinger_fidelity(done.counts or {}, exact()) >= 0.99
    assert rig.executed("c") == [f"{job.id}.f2"]
    assert done.metadata is not None
    assert [r["node"] for r in done.metadata["route"]][-1] == "c"  # type: ignore[index]
    assert 0.0 < float(done.metadata["est_fidelity"]) <= 1.0  # type: ignore[arg-type]
    assert not (tmp_path / "states" / job.id).exists()  # forgotten once the job ended


async def test_a_fragment_whose_nodes_all_failed_is_replanned_without_them(
    tmp_path: Path,
) -> None:
    replanned: list[frozenset[str]] = []

    def planner(registry: Registry, now: float, job_id: str, circuit: CircuitIR,
                exclude: frozenset[str], min_fidelity: float) -> JobPlan:  # fmt: skip
        replanned.append(exclude)
        plan = split_halves(registry, now, job_id, circuit, frozenset(), min_fidelity)
        if not exclude:  # the first plan sends the join to `c` with no fallback
            f2 = replace(plan.fragments[2], node_id="c", fallbacks=())
            return replace(plan, fragments=(*plan.fragments[:2], f2))
        return split_halves(registry, now, job_id, circuit, exclude, min_fidelity)

    rig = Rig(tmp_path, planner)
    for name, width in (("a", 2), ("b", 2), ("d", 5)):
        rig.node(name, width)
    rig.node("c", 4, down=True)
    job = await rig.runtime.submit("qasm", 1000, 7, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED, done.error
    f2 = [(f.attempt, f.node_id, f.status) for f in done.fragments if f.fragment_id.endswith("f2")]
    assert f2 == [(1, "c", FragmentStatus.FAILED), (2, "c", FragmentStatus.FAILED),
                  (3, "d", FragmentStatus.COMPLETED)]  # fmt: skip
    assert frozenset({"c"}) in replanned


async def test_no_feasible_replan_fails_with_the_fragments_error(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.node("a", 2)
    rig.node("b", 2)
    rig.node("c", 4, down=True)
    job = await rig.runtime.submit("qasm", 1000, 7, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert done.error is not None
    assert done.error.startswith(f"fragment {job.id}.f2 failed 2 times: attempt 1 on c: ")
    assert f"no feasible plan without ['c']: no available node runs {job.id}.f2" in done.error


async def test_a_restart_resumes_from_the_kept_states_without_running_them_again(
    tmp_path: Path,
) -> None:
    first = Rig(tmp_path)
    for name, width in (("a", 2), ("b", 2), ("c", 4)):
        first.node(name, width)
    plan = split_halves(first.registry, time.time(), "j1", circuit_to_ir(circuit()),
                        frozenset(), 0.0)  # fmt: skip
    # What a coordinator killed while f2 ran left behind: the plan, both halves' states.
    first.states.save_plan(plan)
    now = time.time()
    await first.store.save_job(Job("j1", JobState.EXECUTING, "qasm", 4000, 7, 0.0, now, now))
    for fragment in plan.fragments[:2]:
        _, state, _ = child_run_slice(fragment.circuit, NoiseSpec(), 1, 7, None, True)
        assert state is not None
        first.states.save_state("j1", fragment.fragment_id, decode_state(state))
        await first.store.save_fragment("j1", Fragment(fragment.fragment_id, 1,
                                        fragment.node_id, FragmentStatus.COMPLETED))  # fmt: skip
    await first.store.save_fragment("j1", Fragment("j1.f2", 1, "c", FragmentStatus.EXECUTING))
    assert await first.runtime.recover() == 1
    done = await first.finished("j1")
    assert done.state is JobState.COMPLETED, done.error
    assert first.executed("a") == []
    assert first.executed("b") == []
    assert first.executed("c") == ["j1.f2"]
    assert done.metadata is not None
    assert done.metadata["resumed"] == ["j1.f0", "j1.f1"]
    assert hellinger_fidelity(done.counts or {}, exact()) >= 0.99


async def test_the_cost_model_planners_gate_level_split_runs_and_matches_the_whole_circuit(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, plan_job=None)
    now = time.time()
    for name, gates in (("rot", ("h", "ry", "rx", "rz", "measure")), ("ent", ("cx",))):
        rig.registry.upsert(advert(name, 4).model_copy(update={"gates": gates}), now)
        rig.mesh.add(FakeNode(name, execute=rig._slicer(name)))  # type: ignore[arg-type]
    job = await rig.runtime.submit("qasm", 4000, 7, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED, done.error
    assert done.metadata is not None
    route = [r["node"] for r in done.metadata["route"]]  # type: ignore[index]
    assert len(route) >= 3
    assert set(route) == {"rot", "ent"}
    assert hellinger_fidelity(done.counts or {}, exact()) >= 0.99


def test_a_kept_plan_reads_back_equal_and_its_json_is_canonical(tmp_path: Path) -> None:
    registry = Registry(Thresholds(ttl_s=60))
    for name, width in (("a", 2), ("b", 2), ("c", 4)):
        registry.upsert(advert(name, width), time.time())
    plan = split_halves(registry, time.time(), "j", circuit_to_ir(circuit()), frozenset(), 0.0)
    files = StateFiles(tmp_path)
    files.save_plan(plan)
    assert files.load_plan("j") == plan
    assert JobPlan.from_json(plan.to_json()).to_json() == plan.to_json()
    assert [f.depends_on for f in plan.fragments] == [(), (), ("j.f0", "j.f1")]
    assert files.load_plan("other") is None


async def test_a_replan_that_cuts_the_circuit_differently_starts_the_dag_again(
    tmp_path: Path,
) -> None:
    def planner(registry: Registry, now: float, job_id: str, ir: CircuitIR,
                exclude: frozenset[str], min_fidelity: float) -> JobPlan:  # fmt: skip
        if not exclude:  # three fragments, the join on `c` only
            plan = split_halves(registry, now, job_id, ir, frozenset(), min_fidelity)
            f2 = replace(plan.fragments[2], node_id="c", fallbacks=())
            return replace(plan, fragments=(*plan.fragments[:2], f2))
        whole = FragmentSpec(f"{job_id}.f0", ir, (0, 1, 2, 3), frozenset(GATES) - {"measure"},
                             (), "d", (), measure=True)  # fmt: skip
        return JobPlan(job_id, (whole,), num_clbits=ir.num_clbits, cregs=ir.cregs)

    rig = Rig(tmp_path, planner)
    for name, width in (("a", 2), ("b", 2), ("d", 5)):
        rig.node(name, width)
    rig.node("c", 4, down=True)
    job = await rig.runtime.submit("qasm", 4000, 7, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED, done.error
    assert rig.executed("d") == [f"{job.id}.f0"]  # the whole circuit, on the new plan's node
    assert done.metadata is not None
    assert done.metadata["replans"] == 1
    assert hellinger_fidelity(done.counts or {}, exact()) >= 0.99
