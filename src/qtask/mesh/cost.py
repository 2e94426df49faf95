"""FR-004's cost model and the assignment search (docs/mesh.md, "Planner and cost model").

The cost of assigning drafts to nodes, in milliseconds-equivalent (weights: PlannerSettings):

    cost = latency_weight * makespan_ms + fidelity_weight * (1 - est_fidelity)
           + transfer_weight * transfer_ms

- makespan: the DAG's critical path. A fragment finishes at max(predecessor's finish + its
  hand-off) + 2 link latencies (reserve, execute) + orchestration overhead (+ a busy node's
  penalty) + the run-time estimate (base + gates · amplitudes · ns, + shots when sampling;
  amplitudes 2^n, or 4^n for a density matrix). A node's fragments beyond its free slots
  (capacity - in_use) queue: its total busy time / slots is a lower bound on the makespan.
- est_fidelity: the product over fragments of fidelity^(ops / calibration_gates): a node's
  measured fidelity is the mean of its calibration circuits' (Bell: 2 gates + 2 measurements,
  GHZ-3: 3 + 3, so 5 operations on average), so a fragment of k operations (gates and
  measurements, not barriers) is taken as k/5 such circuits' worth of error.
- transfer: every hand-off's state bytes (16·2^n, or 16·4^n) there and back through the
  coordinator at the node's measured bandwidth (or the configured one), plus its link latency;
  and every fragment's orchestration overhead (messages and records at the coordinator), on
  the critical path or not, so that a split pays for itself or is not taken.

Search: exhaustive over the candidates' product up to `exact_search_max` combinations, else
greedy in topological order followed by one pass of single-fragment improvements. Ties go to
the assignment whose nodes' seeded hashes sort first, so equal nodes share load across jobs
while one seed always gives one plan. Candidates are kept in node-id order, never in the
snapshot's order.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qtask.mesh.config import PlannerSettings
from qtask.mesh.partition import Draft

_USABLE_STATUS = frozenset({"available", "busy"})


@dataclass(frozen=True)
class NodeView:
    """What the planner reads of one node in a registry snapshot."""

    node_id: str
    gates: frozenset[str]
    low: int
    high: int
    fidelity: float
    latency_ms: float | None
    noisy: bool
    status: str
    degraded: tuple[str, ...]
    bandwidth: float | None
    slots: int  # free capacity: fragments it runs at once

    @property
    def usable(self) -> bool:
        """Available or busy, and not degraded."""
        return self.status in _USABLE_STATUS and not self.degraded

    def why_unusable(self) -> str:
        """The status, or the degradation reasons."""
        if self.status not in _USABLE_STATUS:
            return self.status
        return "degraded: " + "; ".join(self.degraded)


def nodes_from_snapshot(snapshot: Mapping[str, Any]) -> list[NodeView]:
    """The snapshot's nodes (Registry.view dicts), by node id."""
    views = []
    for raw in snapshot.get("nodes", ()):
        noise = raw.get("noise") or {}
        low, high = raw.get("qubit_range", (1, 0))
        latency = raw.get("latency_ms")
        bandwidth = raw.get("bandwidth_bytes_per_s")
        views.append(
            NodeView(
                node_id=str(raw["node_id"]),
                gates=frozenset(raw.get("gates", ())),
                low=int(low),
                high=int(high),
                fidelity=float(raw.get("fidelity", 0.0)),
                latency_ms=None if latency is None else float(latency),
                noisy=any(float(v) > 0 for v in noise.values()),
                status=str(raw.get("status", "available")),
                degraded=tuple(raw.get("degraded", ())),
                bandwidth=None if bandwidth is None else float(bandwidth),
                slots=max(1, int(raw.get("capacity", 1)) - int(raw.get("in_use", 0))),
            )
        )
    return sorted(views, key=lambda n: n.node_id)


@dataclass(frozen=True)
class Estimate:
    """An assignment's cost and its parts, per fragment and in all."""

    cost: float
    fidelity: float
    makespan_ms: float
    transfer_ms: float
    fragment_cost: tuple[float, ...]
    fragment_fidelity: tuple[float, ...]
    fragment_finish_ms: tuple[float, ...]
    state_kind: str


class CostModel:
    """Prices assignments of one partition's drafts (module docstring)."""

    def __init__(self, settings: PlannerSettings, drafts: Sequence[Draft], shots: int) -> None:
        self.settings = settings
        self.drafts = drafts
        self.shots = shots
        self.sinks = frozenset(range(len(drafts))) - {d for x in drafts for d in x.deps}

    def state_kind(self, nodes: Sequence[NodeView]) -> str:
        """How this assignment hands off state."""
        if len(self.drafts) == 1:
            return "none"
        return "density_matrix" if any(n.noisy for n in nodes) else "statevector"

    def hand_off_cap(self, node: NodeView) -> int:
        """The widest state `node` may receive or return."""
        s = self.settings
        return s.density_max_qubits if node.noisy else s.statevector_max_qubits

    def estimate(self, nodes: Sequence[NodeView]) -> Estimate:
        """The cost of running drafts[i] on nodes[i] (a prefix of the drafts is allowed)."""
        s = self.settings
        kind = self.state_kind(nodes)
        finish: list[float] = []
        costs: list[float] = []
        own_times: list[float] = []
        fids: list[float] = []
        transfer_total = 0.0
        fidelity = 1.0
        for index, node in enumerate(nodes):
            draft = self.drafts[index]
            start = 0.0
            incoming = 0.0
            for dep in draft.deps:
                hop = self._transfer_ms(self.drafts[dep].width, kind, node)
                incoming += hop
                start = max(start, finish[dep] + hop)
            own = (
                2 * self._link(node)
                + s.fragment_overhead_ms
                + (s.busy_penalty_ms if node.status == "busy" else 0.0)
                + self._run_ms(draft, node, kind, index in self.sinks)
            )
            finish.append(start + own)
            own_times.append(own)
            fid = node.fidelity ** (draft.size / s.calibration_gates)
            fids.append(fid)
            fidelity *= fid
            transfer_total += incoming
            risk = s.fidelity_weight * (1 - fid)
            costs.append(s.latency_weight * own + risk + s.transfer_weight * incoming)
        # Fragments sharing a node beyond its free slots queue: its busy time bounds the makespan.
        load: dict[str, float] = {}
        for node, own_ms in zip(nodes, own_times, strict=True):
            load[node.node_id] = load.get(node.node_id, 0.0) + own_ms / node.slots
        makespan = max([*finish, *load.values()], default=0.0)
        # Every fragment is coordinator work and messages whether or not it is on the critical
        # path: its orchestration overhead counts again here, so a split must pay for itself.
        transfer_total += s.fragment_overhead_ms * len(nodes)
        cost = (
            s.latency_weight * makespan
            + s.fidelity_weight * (1 - fidelity)
            + s.transfer_weight * transfer_total
        )
        return Estimate(
            cost, fidelity, makespan, transfer_total, tuple(costs), tuple(fids), tuple(finish), kind
        )

    def _link(self, node: NodeView) -> float:
        return self.settings.unknown_latency_ms if node.latency_ms is None else node.latency_ms

    def _transfer_ms(self, width: int, kind: str, node: NodeView) -> float:
        size = 16.0 * (4.0**width if kind == "density_matrix" else 2.0**width)
        bandwidth = node.bandwidth or self.settings.bandwidth_bytes_per_s
        return 2 * size / bandwidth * 1000.0 + self._link(node)

    def _run_ms(self, draft: Draft, node: NodeView, kind: str, sink: bool) -> float:
        s = self.settings
        amplitudes = 2.0**draft.width
        if node.noisy:
            # A density matrix when handing off; sampling alone may use per-shot trajectories.
            dense = 4.0**draft.width
            amplitudes = dense if kind == "density_matrix" else min(dense, self.shots * amplitudes)
        run = s.run_base_ms + draft.size * amplitudes * s.gate_ns_per_amplitude / 1e6
        if sink:
            run += self.shots * s.shot_us / 1000.0
        return run


def _tie(seed: int, node_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{node_id}".encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Assignment:
    """The chosen node per draft, the fallbacks per draft, and the estimate."""

    nodes: tuple[NodeView, ...]
    fallbacks: tuple[tuple[str, ...], ...]
    estimate: Estimate


def search(
    model: CostModel, candidates: Sequence[Sequence[NodeView]], seed: int
) -> Assignment | None:
    """The cheapest assignment (module docstring); None when a draft has no candidate."""
    if any(not c for c in candidates):
        return None

    def key(chosen: Iterable[NodeView]) -> tuple[float, tuple[bytes, ...]]:
        nodes = tuple(chosen)
        return (_round(model.estimate(nodes).cost), tuple(_tie(seed, n.node_id) for n in nodes))

    combos = math.prod(len(c) for c in candidates)
    best: list[NodeView]
    if combos <= model.settings.exact_search_max:
        best = list(min(itertools.product(*candidates), key=key))
    else:
        best = []
        for options in candidates:
            best.append(min(options, key=lambda n: key([*best, n])))
        for index, options in enumerate(candidates):
            best[index] = min(options, key=lambda n: key([*best[:index], n, *best[index + 1 :]]))
    fallbacks = []
    for index, options in enumerate(candidates):
        others = [n for n in options if n.node_id != best[index].node_id]
        others.sort(key=lambda n: key([*best[:index], n, *best[index + 1 :]]))
        fallbacks.append(tuple(n.node_id for n in others))
    return Assignment(tuple(best), tuple(fallbacks), model.estimate(best))


def _round(value: float) -> float:
    # Sums of floats in one fixed order are reproducible; rounding only keeps ties ties.
    return round(value, 9)
