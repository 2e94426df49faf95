"""The coordinator's registry of service nodes (FR-002) and their measured quality (FR-008).

Pure: no I/O, no clock of its own (every call takes `now`, unix seconds), no libp2p. The
coordinator feeds it adverts that passed `validate_advert`, disconnect notices, and quality
reports; the planner asks it for candidates and records `snapshot()` with each decision.

Rules, each with the reason:
- Newer wins: per node, the advert with the larger `(timestamp, seq)` is kept. `seq` alone
  restarts at 0 when a node restarts; its timestamp does not go back.
- TTL: a node whose last advert arrived more than `ttl_s` ago is `unavailable` (its process may
  be gone without a disconnect, e.g. SIGSTOPped or cut off).
- A disconnect notice makes a node `unavailable` at once (~0.2 s after a SIGKILL on loopback,
  where the TTL would take seconds); only an advert published after the notice brings it back.
- Entries reloaded from the database after a restart are `stale`: listed, never chosen, until
  their node advertises again (FR-010).
- Degraded (FR-008): measured fidelity below `degraded_fidelity`, or the coordinator's link to
  the node slower than `degraded_latency_ms` or losing more than `degraded_loss` of its pings.
  A degraded node is listed with its reasons and not chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from qtask.mesh.protocol import Advert, Availability, QualityReport

# What `status` a node can be in, as the API lists it.
STATUS_AVAILABLE = "available"
STATUS_BUSY = "busy"
STATUS_DRAINING = "draining"
STATUS_UNAVAILABLE = "unavailable"
STATUS_STALE = "stale"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """FR-008's degradation thresholds and FR-002's TTL (from CoordinatorSettings)."""

    ttl_s: float = 6.0
    degraded_fidelity: float = 0.8
    degraded_latency_ms: float = 250.0
    degraded_loss: float = 0.5


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """What the registry knows about one node."""

    advert: Advert
    received_at: float  # when the coordinator received the advert (its clock)
    stale: bool = False  # reloaded from the database, not re-advertised since
    disconnected_at: float | None = None
    fidelity: float | None = None  # the latest measured fidelity (advert or quality report)
    fidelity_at: float = 0.0
    latency_ms: float | None = None  # the coordinator's link to the node
    loss: float | None = None
    link_at: float = 0.0

    @property
    def node_id(self) -> str:
        """The node's peer id."""
        return self.advert.node_id

    @property
    def measured_fidelity(self) -> float:
        """The newest fidelity measurement: the advert's or a later quality report's."""
        return self.advert.fidelity if self.fidelity is None else self.fidelity


class Registry:
    """Every node the coordinator has heard of, and the rules above."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._nodes: dict[str, NodeEntry] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, node_id: str) -> NodeEntry | None:
        """The entry of `node_id`, if known."""
        return self._nodes.get(node_id)

    def entries(self) -> list[NodeEntry]:
        """Every entry, by node id."""
        return [self._nodes[key] for key in sorted(self._nodes)]

    def load(self, adverts: Iterable[tuple[Advert, float]]) -> None:
        """Entries from the database after a restart: each `stale` until its node re-advertises."""
        for advert, received_at in adverts:
            self._nodes[advert.node_id] = NodeEntry(advert, received_at, stale=True)

    def upsert(self, advert: Advert, now: float) -> bool:
        """Take a validated advert; False (ignored) when an advert as new or newer is held."""
        old = self._nodes.get(advert.node_id)
        if old is None:
            self._nodes[advert.node_id] = NodeEntry(advert, now)
            return True
        if not old.stale and (advert.timestamp, advert.seq) <= (
            old.advert.timestamp,
            old.advert.seq,
        ):
            return False
        disconnected = old.disconnected_at
        if disconnected is not None and advert.timestamp > disconnected:
            disconnected = None  # published after the disconnect: the node is back
        fidelity = old.fidelity
        if fidelity is not None and advert.fidelity_measured_at >= old.fidelity_at:
            fidelity = None  # the advert's own measurement is the newer one
        self._nodes[advert.node_id] = replace(
            old,
            advert=advert,
            received_at=now,
            stale=False,
            disconnected_at=disconnected,
            fidelity=fidelity,
        )
        return True

    def disconnected(self, node_id: str, now: float) -> None:
        """The libp2p connection to `node_id` closed: unavailable until it advertises again."""
        old = self._nodes.get(node_id)
        if old is not None:
            self._nodes[node_id] = replace(old, disconnected_at=now)

    def quality(self, report: QualityReport) -> bool:
        """Take a quality report about a known node; False when it is about an unknown node
        or older than what is held."""
        old = self._nodes.get(report.node_id)
        if old is None:
            return False
        if report.kind == "fidelity" and report.fidelity is not None:
            if report.measured_at < max(old.fidelity_at, old.advert.fidelity_measured_at):
                return False
            self._nodes[report.node_id] = replace(
                old, fidelity=report.fidelity, fidelity_at=report.measured_at
            )
            return True
        if report.kind == "link":
            if report.measured_at < old.link_at:
                return False
            self._nodes[report.node_id] = replace(
                old,
                latency_ms=report.latency_ms,
                loss=report.loss,
                link_at=report.measured_at,
            )
            return True
        return False

    def status(self, entry: NodeEntry, now: float) -> str:
        """available | busy | draining | unavailable | stale."""
        if entry.stale:
            return STATUS_STALE
        if entry.disconnected_at is not None or now - entry.received_at > self.thresholds.ttl_s:
            return STATUS_UNAVAILABLE
        if entry.advert.availability is Availability.DRAINING:
            return STATUS_DRAINING
        if entry.advert.availability is Availability.BUSY:
            return STATUS_BUSY
        return STATUS_AVAILABLE

    def degraded(self, entry: NodeEntry) -> list[str]:
        """Why the node is degraded (FR-008); empty when it is not."""
        limits = self.thresholds
        reasons = []
        if entry.measured_fidelity < limits.degraded_fidelity:
            reasons.append(f"fidelity {entry.measured_fidelity:.3f} < {limits.degraded_fidelity:g}")
        if entry.latency_ms is not None and entry.latency_ms > limits.degraded_latency_ms:
            reasons.append(
                f"link latency {entry.latency_ms:.1f} ms > {limits.degraded_latency_ms:g} ms"
            )
        if entry.loss is not None and entry.loss > limits.degraded_loss:
            reasons.append(f"link loss {entry.loss:.2f} > {limits.degraded_loss:g}")
        return reasons

    def query(
        self,
        now: float,
        *,
        gate: str | None = None,
        min_fidelity: float | None = None,
        available: bool | None = None,
        qubits: int | None = None,
    ) -> list[NodeEntry]:
        """FR-002 discovery: nodes offering `gate`, measured fidelity >= `min_fidelity`,
        (not) available now, and taking `qubits`-qubit fragments; by node id."""
        found = []
        for entry in self.entries():
            if gate is not None and gate not in entry.advert.gates:
                continue
            if min_fidelity is not None and entry.measured_fidelity < min_fidelity:
                continue
            if available is not None and (self.status(entry, now) == STATUS_AVAILABLE) != (
                available
            ):
                continue
            if qubits is not None and not _takes(entry.advert, qubits):
                continue
            found.append(entry)
        return found

    def candidates(
        self, now: float, *, gates: Iterable[str], num_qubits: int, min_fidelity: float
    ) -> list[NodeEntry]:
        """Nodes that can run a fragment now, best first: every gate, the qubits, the
        fidelity, available (or busy: it answers with a next window), not degraded.

        Order: measured fidelity (higher first), then link latency (lower first), then node
        id, so the same registry always gives the same plan (the seed's NFR-001).
        """
        needed = set(gates)
        chosen = [
            entry
            for entry in self.entries()
            if needed <= set(entry.advert.gates)
            and _takes(entry.advert, num_qubits)
            and entry.measured_fidelity >= min_fidelity
            and self.status(entry, now) in (STATUS_AVAILABLE, STATUS_BUSY)
            and not self.degraded(entry)
        ]
        return sorted(
            chosen,
            key=lambda e: (
                -e.measured_fidelity,
                float("inf") if e.latency_ms is None else e.latency_ms,
                e.node_id,
            ),
        )

    def why_infeasible(
        self, now: float, *, gates: Iterable[str], num_qubits: int, min_fidelity: float
    ) -> str:
        """An actionable sentence: which capability or constraint no usable node meets."""
        usable = [
            e
            for e in self.entries()
            if self.status(e, now) in (STATUS_AVAILABLE, STATUS_BUSY) and not self.degraded(e)
        ]
        if not self._nodes:
            return "no service node is known to the coordinator yet"
        if not usable:
            return (
                f"no service node is available and healthy now ({len(self._nodes)} known: "
                + ", ".join(
                    f"{e.node_id[-8:]} {self._why_unusable(e, now)}" for e in self.entries()
                )
                + ")"
            )
        for gate in sorted(set(gates)):
            if not any(gate in e.advert.gates for e in usable):
                return f"no available node offers `{gate}`"
        offering = [e for e in usable if set(gates) <= set(e.advert.gates)]
        if not any(_takes(e.advert, num_qubits) for e in offering):
            return f"no available node offering these gates takes {num_qubits} qubits"
        best = max(e.measured_fidelity for e in offering if _takes(e.advert, num_qubits))
        names = ", ".join(f"`{g}`" for g in sorted(set(gates)) if g not in ("measure", "barrier"))
        return (
            f"no available node offers {names or 'these gates'} on {num_qubits} qubits with "
            f"fidelity >= {min_fidelity:g} (best: {best:.3f})"
        )

    def _why_unusable(self, entry: NodeEntry, now: float) -> str:
        status = self.status(entry, now)
        if status not in (STATUS_AVAILABLE, STATUS_BUSY):
            return status
        return "degraded: " + "; ".join(self.degraded(entry))

    def view(self, entry: NodeEntry, now: float) -> dict[str, object]:
        """One node as the API and a decision's snapshot show it (JSON-able)."""
        advert = entry.advert
        return {
            "node_id": entry.node_id,
            "status": self.status(entry, now),
            "degraded": self.degraded(entry),
            "service_type": advert.service_type,
            "gates": list(advert.gates),
            "qubit_range": list(advert.qubit_range),
            "fidelity": round(entry.measured_fidelity, 6),
            "advertised_fidelity": advert.fidelity,
            "latency_ms": entry.latency_ms,
            "loss": entry.loss,
            "capacity": advert.capacity,
            "in_use": advert.in_use,
            "noise": advert.noise.model_dump(),
            "addrs": list(advert.addrs),
            "seq": advert.seq,
            "advertised_at": advert.timestamp,
            "age_s": round(max(0.0, now - entry.received_at), 3),
        }

    def snapshot(self, now: float) -> dict[str, object]:
        """The whole registry as a JSON-able dict, recorded with each decision (FR-008)."""
        return {
            "at": now,
            "ttl_s": self.thresholds.ttl_s,
            "nodes": [self.view(entry, now) for entry in self.entries()],
        }


def _takes(advert: Advert, qubits: int) -> bool:
    low, high = advert.qubit_range
    return low <= qubits <= high
