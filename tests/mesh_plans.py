"""A hand-built fragment DAG for runtime tests (until the cost-model planner splits circuits):
`split_halves` cuts any circuit into three fragments, the agreed Plan shape's DAG

    f0 (qubits 0..n/2-1) ──┐
                           ├──> f2 (all qubits, measures)
    f1 (qubits n/2..n-1) ──┘

f0 and f1 take the gates before the first one that spans both halves (or the first
measurement); they touch disjoint qubits, so they run in parallel and their output states join
(tensor product) into f2's input. Nodes: for each fragment the registry's candidates ordered by
their widest fragment (`qubit_range` max), then node id, so a test picks the route by giving
nodes different widths; each fragment takes the first candidate no earlier fragment took, its
fallbacks are the other candidates in that order. The coordinator loads it with
`[mesh.coordinator] planner = "mesh_plans:split_halves"`.
"""

from __future__ import annotations

from qtask.mesh.dag import FragmentSpec, JobPlan
from qtask.mesh.ir import operation_names
from qtask.mesh.protocol import CircuitIR, Instruction
from qtask.mesh.registry import Registry
from qtask.mesh.runtime import PlanInfeasibleError

_DIRECTIVES = frozenset({"barrier", "measure", "reset"})


def _slice(
    instructions: list[Instruction], qubits: tuple[int, ...], circuit: CircuitIR, measure: bool
) -> CircuitIR:
    index = {q: i for i, q in enumerate(qubits)}
    body = tuple(i.model_copy(update={"qubits": tuple(index[q] for q in i.qubits)})
                 for i in instructions)  # fmt: skip
    if measure:
        return CircuitIR(num_qubits=len(qubits), num_clbits=circuit.num_clbits,
                         instructions=body, cregs=circuit.cregs)  # fmt: skip
    return CircuitIR(num_qubits=len(qubits), num_clbits=0, instructions=body)


def split_halves(
    registry: Registry,
    now: float,
    job_id: str,
    circuit: CircuitIR,
    exclude: frozenset[str],
    min_fidelity: float,
) -> JobPlan:
    """The three-fragment DAG of `circuit` (at least 2 qubits) on the registry's nodes."""
    n = circuit.num_qubits
    low, high = tuple(range(n // 2)), tuple(range(n // 2, n))
    parts: dict[tuple[int, ...], list[Instruction]] = {low: [], high: []}
    rest = list(circuit.instructions)
    while rest:
        op = rest[0]
        if op.name in _DIRECTIVES:
            break
        group = next((g for g in (low, high) if set(op.qubits) <= set(g)), None)
        if group is None:
            break
        parts[group].append(rest.pop(0))
    slices = [
        (f"{job_id}.f0", low, _slice(parts[low], low, circuit, False), ()),
        (f"{job_id}.f1", high, _slice(parts[high], high, circuit, False), ()),
        (f"{job_id}.f2", low + high, _slice(rest, low + high, circuit, True),
         (f"{job_id}.f0", f"{job_id}.f1")),
    ]  # fmt: skip
    used: set[str] = set()
    fragments = []
    for fragment_id, qubits, ir, depends in slices:
        gates = operation_names(ir) - _DIRECTIVES
        found = [
            e
            for e in registry.candidates(now, gates=gates, num_qubits=len(qubits),
                                         min_fidelity=min_fidelity)
            if e.node_id not in exclude
        ]  # fmt: skip
        if not found:
            raise PlanInfeasibleError(
                f"no available node runs {fragment_id} ({len(qubits)} qubits, gates "
                f"{sorted(gates)}) with fidelity >= {min_fidelity}"
                + (f" without {sorted(exclude)}" if exclude else "")
            )
        ordered = [e.node_id for e in sorted(found, key=lambda e: (e.advert.qubit_range[1],
                                                                     e.node_id))]  # fmt: skip
        node = next((x for x in ordered if x not in used), ordered[0])
        used.add(node)
        fragments.append(
            FragmentSpec(fragment_id, ir, qubits, frozenset(gates), depends, node,
                         tuple(x for x in ordered if x != node), measure=bool(depends))
        )  # fmt: skip
    return JobPlan(job_id, tuple(fragments), num_clbits=circuit.num_clbits)
