"""The mesh planner (FR-003/004): fragment DAGs, gate-level services, width caps, the cost
model, determinism and actionable infeasibility errors (property tests with hypothesis)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit.quantum_info import Statevector

from qtask.config import Settings
from qtask.mesh.config import PlannerSettings
from qtask.mesh.ir import ir_to_circuit
from qtask.mesh.planner import Plan, PlanInfeasibleError, plan_job
from qtask.mesh.protocol import Advert, Availability, CircuitIR, Instruction, NoiseSpec
from qtask.mesh.registry import Registry, Thresholds

ONE_Q = ("h", "x", "s", "t", "rz", "ry")
TWO_Q = ("cx", "cz", "swap")
PARAMETRIC = frozenset({"rz", "ry"})
CONFIG = PlannerSettings()
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def node(
    name: str,
    gates: tuple[str, ...] = (*ONE_Q, *TWO_Q, "ccx"),
    *,
    fidelity: float = 1.0,
    latency_ms: float | None = 1.0,
    max_qubits: int = 20,
    noisy: bool = False,
    status: str = "available",
    degraded: tuple[str, ...] = (),
    capacity: int = 1,
) -> dict[str, Any]:
    """One node as Registry.view shows it."""
    return {
        "node_id": name,
        "status": status,
        "degraded": list(degraded),
        "gates": [*gates, "measure", "barrier"],
        "qubit_range": [1, max_qubits],
        "fidelity": fidelity,
        "latency_ms": latency_ms,
        "noise": {"depolarizing_1q": 0.01 if noisy else 0.0, "depolarizing_2q": 0.0},
        "capacity": capacity,
        "in_use": 0,
    }


def snapshot(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"at": 100.0, "ttl_s": 6.0, "nodes": list(nodes)}


def ir(
    ops: list[tuple[str, tuple[int, ...]]], num_qubits: int, *, measure: bool = True
) -> CircuitIR:
    instructions = [
        Instruction(name=name, qubits=qubits, params=(0.3,) if name in PARAMETRIC else ())
        for name, qubits in ops
    ]
    if measure:
        instructions += [
            Instruction(name="measure", qubits=(q,), clbits=(q,)) for q in range(num_qubits)
        ]
    return CircuitIR(
        num_qubits=num_qubits,
        num_clbits=num_qubits if measure else 0,
        instructions=tuple(instructions),
        cregs=(("c", num_qubits),) if measure else (),
    )


@st.composite
def circuits(draw: st.DrawFn, max_qubits: int = 5, max_ops: int = 20) -> CircuitIR:
    n = draw(st.integers(2, max_qubits))
    ops: list[tuple[str, tuple[int, ...]]] = []
    for _ in range(draw(st.integers(1, max_ops))):
        width = draw(st.sampled_from((1, 1, 2, 2, 3) if n >= 3 else (1, 2)))
        qubits = tuple(draw(st.permutations(range(n)))[:width])
        name = {1: lambda: draw(st.sampled_from(ONE_Q)),
                2: lambda: draw(st.sampled_from(TWO_Q)),
                3: lambda: "ccx"}[width]()  # fmt: skip
        if draw(st.integers(0, 9)) == 0:  # now and then a barrier, on one group or across
            name = "barrier"
        ops.append((name, qubits))
    return ir(ops, n)


@st.composite
def mixed_snapshots(draw: st.DrawFn) -> dict[str, Any]:
    """Gate-level services: 1-qubit nodes, 2-qubit nodes, and maybe a node offering all."""
    fidelity, latency = st.floats(0.9, 1.0), st.floats(0.5, 20)
    nodes = [
        node("one-a", ONE_Q, fidelity=draw(fidelity), latency_ms=draw(latency)),
        node("two-a", (*TWO_Q, "ccx"), fidelity=draw(fidelity), latency_ms=draw(latency)),
    ]
    for i in range(draw(st.integers(0, 3))):
        gates = draw(st.sampled_from([ONE_Q, (*TWO_Q, "ccx"), (*ONE_Q, *TWO_Q, "ccx")]))
        nodes.append(node(f"extra-{i}", gates, fidelity=draw(st.floats(0.85, 1.0)),
                          latency_ms=draw(st.sampled_from([None, 1.0, 5.0]))))  # fmt: skip
    return snapshot(*nodes)


def index_by_fragment(plan: Plan) -> dict[str, int]:
    return {f.fragment_id: i for i, f in enumerate(plan.fragments)}


@PROPERTY
@given(circuits(), mixed_snapshots(), st.randoms(use_true_random=False), st.integers(0, 2**31))
def test_plan_is_byte_identical_for_a_shuffled_snapshot(
    circuit: CircuitIR, snap: dict[str, Any], rng: random.Random, seed: int
) -> None:
    first = plan_job("job", circuit, snap, CONFIG, seed=seed)
    nodes = list(snap["nodes"])
    rng.shuffle(nodes)
    again = plan_job("job", circuit, {**snap, "nodes": nodes}, CONFIG, seed=seed)
    assert again.to_json() == first.to_json()
    assert again.snapshot_digest == first.snapshot_digest


@PROPERTY
@given(circuits(), mixed_snapshots())
def test_every_gate_is_in_exactly_one_fragment_in_per_qubit_order_with_acyclic_deps(
    circuit: CircuitIR, snap: dict[str, Any]
) -> None:
    plan = plan_job("job", circuit, snap, CONFIG, seed=1)
    position = index_by_fragment(plan)
    # Map each fragment op back to the job's qubits; per qubit, the sequence over fragments in
    # plan order must be the circuit's sequence on that qubit.
    per_qubit: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    for fragment in plan.fragments:
        for dep in fragment.depends_on:
            assert position[dep] < position[fragment.fragment_id]  # topological, so acyclic
        for op in fragment.circuit.instructions:
            if op.name == "barrier":
                continue  # kept inside a group, dropped across groups: it changes no state
            qubits = tuple(fragment.qubits[q] for q in op.qubits)
            for q in qubits:
                per_qubit.setdefault(q, []).append((op.name, qubits))
    expected: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    for op in (op for op in circuit.instructions if op.name != "barrier"):
        for q in op.qubits:
            expected.setdefault(q, []).append((op.name, op.qubits))
    assert per_qubit == expected
    gates = [op for f in plan.fragments for op in f.circuit.instructions if op.name != "barrier"]
    assert len(gates) == sum(1 for op in circuit.instructions if op.name != "barrier")
    # Only sinks measure, and a fragment's predecessors' qubits are its own.
    sinks = {f.fragment_id for f in plan.fragments} - {
        d for f in plan.fragments for d in f.depends_on
    }
    for fragment in plan.fragments:
        assert fragment.measure == (fragment.fragment_id in sinks)
        for dep in fragment.depends_on:
            assert set(plan.fragments[position[dep]].qubits) <= set(fragment.qubits)


@PROPERTY
@given(circuits(), mixed_snapshots())
def test_every_fragment_runs_on_a_node_offering_its_gates_and_width(
    circuit: CircuitIR, snap: dict[str, Any]
) -> None:
    plan = plan_job("job", circuit, snap, CONFIG, seed=1)
    nodes = {n["node_id"]: n for n in snap["nodes"]}
    for fragment in plan.fragments:
        used = {op.name for op in fragment.circuit.instructions} - {"measure", "barrier"}
        assert used == fragment.gates
        for name in (fragment.node_id, *fragment.fallbacks):
            assert fragment.gates <= set(nodes[name]["gates"])
            low, high = nodes[name]["qubit_range"]
            assert low <= len(fragment.qubits) <= high
        assert fragment.node_id not in fragment.fallbacks


def unitary_part(circuit: CircuitIR) -> CircuitIR:
    ops = tuple(op for op in circuit.instructions if op.name != "measure")
    return CircuitIR(num_qubits=circuit.num_qubits, num_clbits=0, instructions=ops)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(circuits(max_qubits=5, max_ops=25), mixed_snapshots())
def test_replaying_the_fragments_in_dag_order_gives_the_circuits_statevector(
    circuit: CircuitIR, snap: dict[str, Any]
) -> None:
    plan = plan_job("job", circuit, snap, CONFIG, seed=1)
    state = Statevector.from_label("0" * circuit.num_qubits)
    for fragment in plan.fragments:  # topological order
        state = state.evolve(ir_to_circuit(unitary_part(fragment.circuit)), list(fragment.qubits))
    expected = Statevector.from_label("0" * circuit.num_qubits).evolve(
        ir_to_circuit(unitary_part(circuit))
    )
    assert np.allclose(state.data, expected.data, atol=1e-9)


BELL = ir([("h", (0,)), ("cx", (0, 1))], 2)


@given(
    st.floats(0.80, 0.99),
    st.floats(0.001, 0.05),
    st.floats(1.0, 100.0),
    st.floats(0.0, 50.0),
    st.integers(0, 2**31),
)
def test_a_strictly_better_node_is_chosen(
    fidelity: float, gain: float, latency: float, saving: float, seed: int
) -> None:
    worse = node("aaa-worse", fidelity=fidelity, latency_ms=latency + saving)
    better = node("zzz-better", fidelity=fidelity + gain, latency_ms=latency)
    plan = plan_job("job", BELL, snapshot(worse, better), CONFIG, seed=seed)
    assert [f.node_id for f in plan.fragments] == ["zzz-better"]
    assert plan.fragments[0].fallbacks == ("aaa-worse",)


@pytest.mark.parametrize(
    "broken",
    [
        {"degraded": ["fidelity 0.500 < 0.8"]},
        {"status": "unavailable"},
        {"status": "stale"},
        {"status": "draining"},
    ],
)
def test_a_degraded_or_unavailable_node_is_avoided(broken: dict[str, Any]) -> None:
    best_on_paper = {**node("aaa-best", latency_ms=0.1), **broken}
    plan = plan_job("job", BELL, snapshot(best_on_paper, node("bbb", fidelity=0.9)), CONFIG, seed=1)
    assert [f.node_id for f in plan.fragments] == ["bbb"]
    assert plan.fragments[0].fallbacks == ()


def test_a_node_with_a_lower_measured_fidelity_is_avoided_when_latency_is_equal() -> None:
    plan = plan_job(
        "job", BELL, snapshot(node("a", fidelity=0.90), node("b", fidelity=0.97)), CONFIG, seed=3
    )
    assert plan.fragments[0].node_id == "b"
    assert plan.est_fidelity == pytest.approx(0.97 ** (4 / 5), abs=1e-6)


def test_one_node_offering_everything_runs_the_circuit_as_one_fragment() -> None:
    snap = snapshot(node("all"), node("one", ONE_Q), node("two", TWO_Q))
    plan = plan_job("job", BELL, snap, CONFIG, seed=1)
    assert [(f.node_id, f.measure, f.depends_on) for f in plan.fragments] == [("all", True, ())]
    assert plan.state_kind == "none"


def test_gate_level_services_split_a_circuit_into_slices_each_on_a_node_offering_it() -> None:
    plan = plan_job("job", BELL, snapshot(node("one", ONE_Q), node("two", TWO_Q)), CONFIG, seed=1)
    assert [(f.fragment_id, f.node_id, sorted(f.gates), f.depends_on, f.measure)
            for f in plan.fragments] == [
        ("job.f0", "one", ["h"], (), False),
        ("job.f1", "two", ["cx"], ("job.f0",), True),
    ]  # fmt: skip
    assert plan.state_kind == "statevector"
    assert plan.fragments[1].circuit.num_clbits == 2  # the job's classical layout
    assert plan.fragments[0].circuit.num_clbits == 0


def test_independent_groups_run_in_parallel_on_two_nodes_when_run_time_dominates() -> None:
    ops: list[tuple[str, tuple[int, ...]]] = []
    for first in (0, 3):  # two GHZ-3 groups, then more gates on each qubit
        ops += [("h", (first,)), ("cx", (first, first + 1)), ("cx", (first + 1, first + 2))]
    ops += [(g, (q,)) for q in range(6) for g in ("t", "h")]
    circuit = ir(ops, 6)
    slow_sim = PlannerSettings(gate_ns_per_amplitude=1e5)  # run time >> links
    plan = plan_job("job", circuit, snapshot(node("a"), node("b")), slow_sim, seed=1)
    assert [(f.qubits, f.depends_on, f.measure) for f in plan.fragments] == [
        ((0, 1, 2), (), True),
        ((3, 4, 5), (), True),
    ]
    assert {f.node_id for f in plan.fragments} == {"a", "b"}  # one slot each: not both on a
    two_slots = snapshot(node("a", capacity=2), node("b", latency_ms=5.0))
    plan = plan_job("job", circuit, two_slots, slow_sim, seed=1)
    assert [f.node_id for f in plan.fragments] == ["a", "a"]  # in parallel on a's two slots
    # With the default (fast) run-time estimate the extra fragment's overhead is not worth it.
    plan = plan_job("job", circuit, snapshot(node("a"), node("b")), CONFIG, seed=1)
    assert len(plan.fragments) == 1


def test_excluded_nodes_are_never_chosen_and_the_error_says_they_were_excluded() -> None:
    snap = snapshot(node("a", latency_ms=0.1), node("b", latency_ms=9.0))
    plan = plan_job("job", BELL, snap, CONFIG, seed=1, exclude=frozenset({"a"}))
    assert [f.node_id for f in plan.fragments] == ["b"]
    with pytest.raises(PlanInfeasibleError, match="excluded after failures: a, b"):
        plan_job("job", BELL, snap, CONFIG, seed=1, exclude=frozenset({"a", "b"}))


@pytest.mark.parametrize(
    ("nodes", "min_fidelity", "message"),
    [
        ((), 0.0, "no service node is known to the coordinator yet"),
        ((node("a", ("h", "cx")),), 0.0, "no available node offers `ccx`"),
        (
            (node("a", fidelity=0.95), node("b", ONE_Q, fidelity=0.999)),
            0.99,
            "no available node offers `ccx` with fidelity >= 0.99 (best: 0.950)",
        ),
        ((node("a", status="unavailable"),), 0.0, "no service node is available and healthy"),
        ((node("a", max_qubits=2),), 0.0, "the circuit links 3 qubits in one group"),
    ],
)
def test_infeasible_errors_name_the_missing_capability_or_constraint(
    nodes: tuple[dict[str, Any], ...], min_fidelity: float, message: str
) -> None:
    circuit = ir([("h", (0,)), ("ccx", (0, 1, 2))], 3)
    with pytest.raises(PlanInfeasibleError) as caught:
        plan_job("job", circuit, snapshot(*nodes), CONFIG, seed=1, min_fidelity=min_fidelity)
    assert message in str(caught.value)


MID_CIRCUIT = CircuitIR(
    num_qubits=2,
    num_clbits=2,
    instructions=(
        Instruction(name="h", qubits=(0,)),
        Instruction(name="measure", qubits=(0,), clbits=(0,)),
        Instruction(name="cx", qubits=(0, 1)),
        Instruction(name="measure", qubits=(1,), clbits=(1,)),
    ),
    cregs=(("c", 2),),
)


def test_mid_circuit_measurement_that_would_cross_fragments_is_refused() -> None:
    snap = snapshot(node("one", ONE_Q), node("two", TWO_Q))
    with pytest.raises(PlanInfeasibleError, match=r"mid-circuit measure on qubit\(s\) \[0\]"):
        plan_job("job", MID_CIRCUIT, snap, CONFIG, seed=1)


def test_mid_circuit_measurement_inside_one_fragment_is_planned() -> None:
    snap = snapshot(node("one", ONE_Q), node("all"))
    plan = plan_job("job", MID_CIRCUIT, snap, CONFIG, seed=1)
    assert [(f.node_id, len(f.circuit.instructions)) for f in plan.fragments] == [("all", 4)]


def test_a_measured_group_merges_with_the_group_a_later_gate_joins_it_to() -> None:
    circuit = CircuitIR(
        num_qubits=3,
        num_clbits=3,
        instructions=(
            Instruction(name="h", qubits=(0,)),
            Instruction(name="measure", qubits=(0,), clbits=(0,)),
            Instruction(name="h", qubits=(1,)),
            Instruction(name="cx", qubits=(0, 1)),
            Instruction(name="measure", qubits=(1,), clbits=(1,)),
        ),
        cregs=(("c", 3),),
    )
    slow_sim = PlannerSettings(gate_ns_per_amplitude=1e6)  # would split if it could
    plan = plan_job("job", circuit, snapshot(node("a"), node("b")), slow_sim, seed=1)
    assert [(f.qubits, f.depends_on) for f in plan.fragments] == [((0, 1), ())]


def test_noisy_nodes_hand_off_density_matrices_only_up_to_their_width_cap() -> None:
    wide = ir([("h", (q,)) for q in range(12)] + [("cx", (q, q + 1)) for q in range(11)], 12)
    noisy = snapshot(node("one", ONE_Q, noisy=True), node("two", TWO_Q, noisy=True))
    with pytest.raises(PlanInfeasibleError, match="hand-off caps"):
        plan_job("job", wide, noisy, CONFIG, seed=1)
    ideal = snapshot(node("one", ONE_Q), node("two", TWO_Q))
    assert plan_job("job", wide, ideal, CONFIG, seed=1).state_kind == "statevector"
    narrow = plan_job("job", BELL, noisy, CONFIG, seed=1)
    assert narrow.state_kind == "density_matrix"


def test_greedy_search_beyond_the_exact_limit_is_deterministic_and_feasible() -> None:
    ops = [("h", (q,)) for q in range(4)] + [("cx", (0, 1)), ("h", (0,)), ("cx", (2, 3))]
    circuit = ir(ops, 4)
    nodes = [node(f"one-{i}", ONE_Q, latency_ms=1.0 + i) for i in range(5)]
    nodes += [node(f"two-{i}", TWO_Q, latency_ms=2.0 + i) for i in range(5)]
    greedy = PlannerSettings(exact_search_max=1)
    first = plan_job("job", circuit, snapshot(*nodes), greedy, seed=7)
    assert first.to_json() == plan_job("job", circuit, snapshot(*reversed(nodes)), greedy,
                                       seed=7).to_json()  # fmt: skip
    exact = plan_job("job", circuit, snapshot(*nodes), PlannerSettings(exact_search_max=10**6),
                     seed=7)  # fmt: skip
    assert first.cost >= exact.cost  # greedy is never better than the exhaustive search
    assert len(first.fragments) >= 3  # gate-level services: h and cx slices alternate


def test_equal_nodes_are_chosen_by_seed_so_jobs_spread_over_them() -> None:
    snap = snapshot(*(node(f"n{i}") for i in range(4)))
    chosen = {plan_job("job", BELL, snap, CONFIG, seed=s).fragments[0].node_id for s in range(40)}
    assert len(chosen) > 1


def test_plan_from_a_real_registry_snapshot_uses_its_measured_fidelity_and_links() -> None:
    registry = Registry(Thresholds())
    for name, fidelity in (("node-a", 0.93), ("node-b", 0.99)):
        registry.upsert(
            Advert(
                node_id=name, gates=("h", "cx", "measure"), qubit_range=(1, 5),
                fidelity=fidelity, fidelity_measured_at=100.0, noise=NoiseSpec(),
                availability=Availability.AVAILABLE, capacity=2, in_use=0, timestamp=100.0, seq=1,
            ),
            100.0,
        )  # fmt: skip
    plan = plan_job("job-1", BELL, registry.snapshot(101.0), CONFIG, seed=1)
    assert [f.node_id for f in plan.fragments] == ["node-b"]
    assert plan.fragments[0].fallbacks == ("node-a",)
    assert plan.to_json().startswith(b'{"cost":')


GHZ3 = ir([("h", (0,)), ("cx", (0, 1)), ("cx", (1, 2))], 3)


def test_a_split_over_better_nodes_beats_one_noisy_node_that_runs_everything() -> None:
    snap = snapshot(
        node("full-noisy", fidelity=0.95, latency_ms=2.0, noisy=True),
        node("rot", ONE_Q, fidelity=0.999, latency_ms=1.2),
        node("two", TWO_Q, fidelity=0.998, latency_ms=1.5),
    )
    plan = plan_job("job", GHZ3, snap, CONFIG, seed=1)
    assert [(f.node_id, f.fallbacks) for f in plan.fragments] == [
        ("rot", ("full-noisy",)),
        ("two", ("full-noisy",)),
    ]
    whole = plan_job("job", GHZ3, snap, CONFIG, seed=1, exclude=frozenset({"two"}))
    assert [f.node_id for f in whole.fragments] == ["full-noisy"]
    assert plan.cost < whole.cost
    assert plan.est_fidelity > whole.est_fidelity
    # Weighing latency only, the one-hop plan wins: the cost decides, not a rule.
    fast = PlannerSettings(fidelity_weight=0.0)
    assert [f.node_id for f in plan_job("job", GHZ3, snap, fast, seed=1).fragments] == [
        "full-noisy"
    ]


def test_planner_weights_are_read_from_the_coordinators_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QTASK_MESH__COORDINATOR__PLANNER__FIDELITY_WEIGHT", "0")
    monkeypatch.setenv("QTASK_MESH__COORDINATOR__PLANNER__DENSITY_MAX_QUBITS", "8")
    planner = Settings().mesh.coordinator.planner
    assert (planner.fidelity_weight, planner.density_max_qubits) == (0.0, 8)
    assert planner.latency_weight == CONFIG.latency_weight
