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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qtask.errors import QTaskError
from qtask.mesh.config import PlannerSettings
from qtask.mesh.protocol import CircuitIR
from qtask.mesh.registry import NodeEntry, Registry


class PlanInfeasibleError(QTaskError):
    """Raised when no assignment of the circuit's fragments to available nodes meets every
    constraint; the message names the missing capability or the constraint."""


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
            "fragment_id": self.fragment_id,
            "circuit": self.circuit.model_dump(mode="json"),
            "qubits": list(self.qubits),
            "gates": sorted(self.gates),
            "depends_on": list(self.depends_on),
            "node_id": self.node_id,
            "fallbacks": list(self.fallbacks),
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
    raise NotImplementedError("plan_job: the shape is committed first; the search follows")

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
