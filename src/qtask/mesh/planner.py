"""The mesh planner (FR-003/004): a circuit becomes a DAG of fragments, each assigned to a node
by a cost model; `plan_job` returns the `Plan` the runtime executes and records.

Pure and deterministic: no I/O, no clock, no Qiskit. The same circuit, registry snapshot,
settings and seed give a byte-identical `Plan.to_json()`. Partitioning lives in
qtask.mesh.partition, the cost model and the assignment search in qtask.mesh.cost; this module
holds the Plan shape (shared with the runtime) and the entry point.

`plan`, `candidates` and `infeasible` are part 1's one-fragment planner, kept for the runtime
until it consumes `Plan`.

Conventions the runtime relies on:
- `PlannedFragment.qubits` is ascending; slice qubit i is job qubit `qubits[i]`. A fragment's
  input state is the product of its `depends_on` fragments' output states (each over their own
  `qubits`) and |0> for its qubits no predecessor holds.
- A fragment with `measure=True` has no dependents and carries the job's whole classical layout
  (`num_clbits`, `cregs`), so its counts read as the job's; bits it does not write read 0. The
  runtime joins several measuring fragments' counts shot by shot (they act on disjoint qubit
  groups, so their outcomes are independent). One with no measurement has all-zero counts.
- Fragments that hand off state hold no measurement or reset (refused: PlanInfeasibleError).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from qtask.errors import QTaskError
from qtask.mesh.config import PlannerSettings
from qtask.mesh.cost import Assignment, CostModel, NodeView, nodes_from_snapshot, search
from qtask.mesh.partition import (
    DIRECTIVES,
    Draft,
    MidCircuitMeasurementError,
    fragment_circuit,
    groups,
    slice_drafts,
    whole,
)
from qtask.mesh.protocol import CircuitIR
from qtask.mesh.registry import NodeEntry, Registry


class PlanInfeasibleError(QTaskError):
    """Raised when no assignment of the circuit's fragments to available nodes meets every
    constraint; the message names the missing capability or the constraint."""


class Placed(Protocol):
    """What a planned fragment and the runtime's FragmentSpec share: the slice and its place."""

    @property
    def fragment_id(self) -> str: ...
    @property
    def circuit(self) -> CircuitIR: ...
    @property
    def qubits(self) -> tuple[int, ...]: ...
    @property
    def gates(self) -> frozenset[str]: ...
    @property
    def depends_on(self) -> tuple[str, ...]: ...
    @property
    def node_id(self) -> str: ...
    @property
    def fallbacks(self) -> tuple[str, ...]: ...


def placement_json(fragment: Placed) -> dict[str, Any]:
    """The JSON form of a fragment's slice and place (the first keys of its `to_dict`)."""
    return {
        "fragment_id": fragment.fragment_id,
        "circuit": fragment.circuit.model_dump(mode="json"),
        "qubits": list(fragment.qubits),
        "gates": sorted(fragment.gates),
        "depends_on": list(fragment.depends_on),
        "node_id": fragment.node_id,
        "fallbacks": list(fragment.fallbacks),
    }


@dataclass(frozen=True)
class PlannedFragment:
    """One fragment of a plan: its slice, where it runs and what it waits for."""

    fragment_id: str  # f"{job_id}.f{index}"
    circuit: CircuitIR  # the slice: only its qubits, renumbered 0..k-1
    qubits: tuple[int, ...]  # which of the job's qubits the slice's 0..k-1 are (ascending)
    gates: frozenset[str]
    depends_on: tuple[str, ...]  # fragment ids whose output state it needs
    node_id: str  # chosen node
    fallbacks: tuple[str, ...]  # next feasible nodes, best first
    est_cost: float
    est_fidelity: float
    est_latency_ms: float
    measure: bool  # samples counts (a sink); the others return their output state

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, canonical (sorted gates)."""
        return {
            **placement_json(self),
            "est_cost": self.est_cost,
            "est_fidelity": self.est_fidelity,
            "est_latency_ms": self.est_latency_ms,
            "measure": self.measure,
        }


@dataclass(frozen=True)
class Plan:
    """A job's fragments in topological order, and what the cost model expects of them."""

    job_id: str
    fragments: tuple[PlannedFragment, ...]  # topological order
    snapshot_digest: str  # sha256 of the canonical registry snapshot planned against
    cost: float
    est_fidelity: float
    # How fragments hand off state: "statevector" (every node ideal), "density_matrix" (a
    # noisy node in a multi-fragment plan), "none" (one fragment).
    state_kind: str = "none"
    est_latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what `to_json` serialises)."""
        return {
            "job_id": self.job_id,
            "fragments": [f.to_dict() for f in self.fragments],
            "snapshot_digest": self.snapshot_digest,
            "cost": self.cost,
            "est_fidelity": self.est_fidelity,
            "state_kind": self.state_kind,
            "est_latency_ms": self.est_latency_ms,
        }

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): byte-identical for equal plans."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def plan_job(
    job_id: str,
    circuit: CircuitIR,
    snapshot: Mapping[str, Any],
    config: PlannerSettings,
    *,
    seed: int,
    exclude: frozenset[str] = frozenset(),
    min_fidelity: float = 0.0,
    shots: int = 1024,
) -> Plan:
    """The cheapest feasible plan of `circuit` on the nodes of `snapshot` (Registry.snapshot()'s
    dict); PlanInfeasibleError with the reason when there is none."""
    nodes = nodes_from_snapshot(snapshot)
    usable = [
        n for n in nodes
        if n.usable and n.node_id not in exclude and n.fidelity >= min_fidelity
    ]  # fmt: skip

    def can(node: NodeView, gates: frozenset[str], width: int, hands_off: bool) -> bool:
        if not (gates <= node.gates and node.low <= width <= node.high):
            return False
        cap = config.density_max_qubits if node.noisy else config.statevector_max_qubits
        return not hands_off or width <= cap

    # Partitions to price: whole and parallel groups, each cut only where the pool of nodes it
    # is sliced for lacks a gate or a width. Pools: every usable node, then only those with
    # fidelity >= each measured level, so a split over better nodes competes with one worse
    # node that runs everything (the cost decides, not a rule).
    levels = sorted({n.fidelity for n in usable}, reverse=True)
    pools = [usable, *([n for n in usable if n.fidelity >= level] for level in levels)]
    best: tuple[tuple[float, int, int], list[Draft], Assignment] | None = None
    mid_circuit: str | None = None
    seen: list[list[Draft]] = []
    for order, (pool, shape) in enumerate(itertools.product(pools, (whole, groups))):

        def runnable(gates: frozenset[str], width: int, hands_off: bool) -> bool:
            return any(can(n, gates, width, hands_off) for n in pool)  # noqa: B023 - used now

        try:
            drafts = slice_drafts(circuit, shape(circuit), runnable)
        except MidCircuitMeasurementError as exc:
            if pool is usable:
                mid_circuit = str(exc)
            continue
        if drafts in seen:
            continue
        seen.append(drafts)
        multi = len(drafts) > 1
        parents = _with_dependents(drafts)
        hands_off = [multi and (bool(d.deps) or i in parents) for i, d in enumerate(drafts)]
        # A noisy node makes every hand-off a density matrix: not when one is wider than that cap.
        wide = max((d.width for d, h in zip(drafts, hands_off, strict=True) if h), default=0)
        noisy_ok = wide <= config.density_max_qubits
        candidates = [
            [n for n in usable if can(n, d.gates, d.width, h) and (noisy_ok or not n.noisy)]
            for d, h in zip(drafts, hands_off, strict=True)
        ]
        assignment = search(CostModel(config, drafts, shots), candidates, seed)
        if assignment is None:
            continue
        key = (round(assignment.estimate.cost, 9), len(drafts), order)
        if best is None or key < best[0]:
            best = (key, drafts, assignment)
    if best is None:
        raise PlanInfeasibleError(
            _why_infeasible(circuit, nodes, config, exclude, min_fidelity, mid_circuit)
        )
    return _build(job_id, circuit, best[1], best[2], snapshot_digest(snapshot))


def snapshot_digest(snapshot: Mapping[str, Any]) -> str:
    """sha256 of the snapshot as canonical JSON, its nodes in node-id order."""
    canonical = dict(snapshot)
    canonical["nodes"] = sorted(snapshot.get("nodes", ()), key=lambda n: str(n["node_id"]))
    data = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()


def _with_dependents(drafts: list[Draft]) -> frozenset[int]:
    return frozenset(d for draft in drafts for d in draft.deps)


def _build(
    job_id: str, circuit: CircuitIR, drafts: list[Draft], assignment: Assignment, digest: str
) -> Plan:
    est = assignment.estimate
    parents = _with_dependents(drafts)
    ids = [f"{job_id}.f{i}" for i in range(len(drafts))]
    fragments = tuple(
        PlannedFragment(
            fragment_id=ids[i],
            circuit=fragment_circuit(circuit, draft, measure=i not in parents),
            qubits=draft.qubits,
            gates=draft.gates,
            depends_on=tuple(ids[d] for d in draft.deps),
            node_id=assignment.nodes[i].node_id,
            fallbacks=assignment.fallbacks[i],
            est_cost=round(est.fragment_cost[i], 6),
            est_fidelity=round(est.fragment_fidelity[i], 6),
            est_latency_ms=round(est.fragment_finish_ms[i], 6),
            measure=i not in parents,
        )
        for i, draft in enumerate(drafts)
    )
    return Plan(
        job_id=job_id,
        fragments=fragments,
        snapshot_digest=digest,
        cost=round(est.cost, 6),
        est_fidelity=round(est.fidelity, 6),
        state_kind=est.state_kind,
        est_latency_ms=round(est.makespan_ms, 6),
    )


def _why_infeasible(
    circuit: CircuitIR,
    nodes: list[NodeView],
    config: PlannerSettings,
    exclude: frozenset[str],
    min_fidelity: float,
    mid_circuit: str | None,
) -> str:
    """FR-004's actionable error: the first capability or constraint no usable node meets."""
    if not nodes:
        return "no service node is known to the coordinator yet"
    excluded = (
        f" (excluded after failures: {', '.join(sorted(exclude))})"
        if exclude & {n.node_id for n in nodes}
        else ""
    )
    alive = [n for n in nodes if n.usable and n.node_id not in exclude]
    if not alive:
        return (
            f"no service node is available and healthy now ({len(nodes)} known: "
            + ", ".join(
                f"{n.node_id[-8:]} {n.why_unusable()}" for n in nodes if n.node_id not in exclude
            )
            + f"){excluded}"
        )
    gates = frozenset(op.name for op in circuit.instructions) - DIRECTIVES
    for gate in sorted(gates):
        offering = [n for n in alive if gate in n.gates]
        if not offering:
            return f"no available node offers `{gate}`{excluded}"
        if all(n.fidelity < min_fidelity for n in offering):
            best = max(n.fidelity for n in offering)
            return (
                f"no available node offers `{gate}` with fidelity >= {min_fidelity:g} "
                f"(best: {best:.3f}){excluded}"
            )
    if mid_circuit is not None:
        return mid_circuit
    good = [n for n in alive if n.fidelity >= min_fidelity]
    widest = max(groups(circuit), key=lambda d: d.width)
    largest = max(n.high for n in good)
    if widest.width > largest:
        return (
            f"the circuit links {widest.width} qubits in one group (qubits "
            f"{list(widest.qubits)}), and no available node takes more than {largest} qubits"
            f"{excluded}"
        )
    return (
        "no assignment of fragments to available nodes meets every constraint: a split plan "
        f"hands off states of up to {widest.width} qubits, over the hand-off caps (statevector "
        f"{config.statevector_max_qubits} qubits on ideal nodes, density matrix "
        f"{config.density_max_qubits} on noisy ones), or no node offering a fragment's gates "
        f"takes its width{excluded}"
    )


# Directives every Aer node runs and no advert needs to list (qtask.mesh.ir.DIRECTIVES).
_DIRECTIVES = frozenset({"barrier", "measure", "reset"})


@dataclass(frozen=True, slots=True)
class FragmentPlan:
    """One fragment: the circuit it runs and what a node needs to run it."""

    fragment_id: str
    circuit: CircuitIR
    gates: frozenset[str]
    num_qubits: int


def plan(job_id: str, circuit: CircuitIR) -> FragmentPlan:
    """The whole circuit as the job's one fragment."""
    gates = frozenset(i.name for i in circuit.instructions) - _DIRECTIVES
    return FragmentPlan(f"{job_id}.f0", circuit, gates, circuit.num_qubits)


def candidates(
    registry: Registry,
    fragment: FragmentPlan,
    now: float,
    *,
    min_fidelity: float,
    exclude: frozenset[str] = frozenset(),
) -> list[NodeEntry]:
    """Nodes that can run `fragment` now, best first; nodes in `exclude` (failed already)
    come last rather than never, so a lone node is retried."""
    found = registry.candidates(
        now, gates=fragment.gates, num_qubits=fragment.num_qubits, min_fidelity=min_fidelity
    )
    return [e for e in found if e.node_id not in exclude] + [
        e for e in found if e.node_id in exclude
    ]


def infeasible(registry: Registry, fragment: FragmentPlan, now: float, min_fidelity: float) -> str:
    """FR-004's actionable error: the capability or constraint no usable node meets."""
    return registry.why_infeasible(
        now, gates=fragment.gates, num_qubits=fragment.num_qubits, min_fidelity=min_fidelity
    )
