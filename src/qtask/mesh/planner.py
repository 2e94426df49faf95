"""The planner of mesh part 1: a circuit becomes ONE fragment for one capable node (FR-004's
minimal case; multi-fragment plans with a cost model come with part 2).

Pure: it reads the registry it is given and returns the fragment and the ordered candidates;
the runtime records the registry snapshot with the decision it takes from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtask.mesh.protocol import CircuitIR
from qtask.mesh.registry import NodeEntry, Registry

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
