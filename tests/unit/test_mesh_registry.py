"""The coordinator's registry (FR-002, FR-008): newer adverts win, TTL, disconnects, stale
entries after a restart, degraded nodes, filters and candidates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qtask.mesh.protocol import Advert, Availability, NoiseSpec, QualityReport
from qtask.mesh.registry import Registry, Thresholds

TTL = 6.0


def advert(
    node: str = "node-a",
    *,
    t: float = 100.0,
    seq: int = 1,
    fidelity: float = 0.95,
    gates: tuple[str, ...] = ("h", "cx", "measure"),
    qubits: tuple[int, int] = (1, 5),
    availability: Availability = Availability.AVAILABLE,
) -> Advert:
    return Advert(
        node_id=node,
        gates=gates,
        qubit_range=qubits,
        fidelity=fidelity,
        fidelity_measured_at=t,
        noise=NoiseSpec(),
        availability=availability,
        capacity=2,
        in_use=0,
        timestamp=t,
        seq=seq,
    )


def registry() -> Registry:
    return Registry(Thresholds(ttl_s=TTL, degraded_fidelity=0.8, degraded_latency_ms=250))


def test_a_newer_advert_replaces_an_older_one_and_an_older_one_is_ignored() -> None:
    reg = registry()
    assert reg.upsert(advert(t=100, seq=2, fidelity=0.9), now=100)
    assert not reg.upsert(advert(t=99, seq=1, fidelity=0.5), now=101)
    assert reg.upsert(advert(t=101, seq=3, fidelity=0.97), now=101)
    entry = reg.get("node-a")
    assert entry is not None
    assert entry.advert.seq == 3
    assert entry.measured_fidelity == 0.97


def test_a_restarted_node_with_seq_from_zero_is_taken_by_its_later_timestamp() -> None:
    reg = registry()
    reg.upsert(advert(t=100, seq=50), now=100)
    assert reg.upsert(advert(t=120, seq=0), now=120)


@given(
    received=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    elapsed=st.floats(min_value=0, max_value=100, allow_nan=False),
)
def test_an_entry_is_available_exactly_until_its_ttl_has_passed(
    received: float, elapsed: float
) -> None:
    reg = registry()
    reg.upsert(advert(t=received), now=received)
    entry = reg.get("node-a")
    assert entry is not None
    expected = "available" if elapsed <= TTL else "unavailable"
    assert reg.status(entry, received + elapsed) == expected
    listed = reg.query(received + elapsed, available=True)
    assert (len(listed) == 1) == (elapsed <= TTL)


@given(
    events=st.lists(
        st.tuples(st.floats(min_value=0, max_value=50, allow_nan=False), st.booleans()),
        min_size=1,
        max_size=20,
    ),
    probe=st.floats(min_value=0, max_value=20, allow_nan=False),
)
def test_availability_follows_the_newest_accepted_advert_and_the_ttl(
    events: list[tuple[float, bool]], probe: float
) -> None:
    """Whatever order adverts arrive in, a node is available iff its newest advert (by
    timestamp) arrived within the TTL and says available."""
    reg = registry()
    now = 0.0
    newest: tuple[float, int] | None = None
    newest_available = False
    received_at = 0.0
    for seq, (t, available) in enumerate(events):
        now += 1.0
        kind = Availability.AVAILABLE if available else Availability.BUSY
        if reg.upsert(advert(t=t, seq=seq, availability=kind), now=now):
            assert newest is None or (t, seq) > newest
            newest, newest_available, received_at = (t, seq), available, now
        else:
            assert newest is not None
            assert (t, seq) <= newest
    entry = reg.get("node-a")
    assert entry is not None
    at = now + probe
    fresh = at - received_at <= TTL
    assert (reg.status(entry, at) == "available") == (fresh and newest_available)


def test_a_disconnect_makes_a_node_unavailable_at_once_until_it_advertises_again() -> None:
    reg = registry()
    reg.upsert(advert(t=100), now=100)
    reg.disconnected("node-a", now=100.2)
    entry = reg.get("node-a")
    assert entry is not None
    assert reg.status(entry, 100.3) == "unavailable"
    # An advert published before the disconnect (late gossip) does not bring it back.
    reg.upsert(advert(t=100.1, seq=2), now=100.4)
    entry = reg.get("node-a")
    assert entry is not None
    assert reg.status(entry, 100.5) == "unavailable"
    reg.upsert(advert(t=101, seq=3), now=101)
    entry = reg.get("node-a")
    assert entry is not None
    assert reg.status(entry, 101) == "available"


def test_reloaded_entries_are_stale_and_never_chosen_until_their_node_readvertises() -> None:
    reg = registry()
    reg.load([(advert(t=100, seq=9), 100.0)])
    entry = reg.get("node-a")
    assert entry is not None
    assert reg.status(entry, 100) == "stale"
    assert reg.candidates(100, gates={"h"}, num_qubits=2, min_fidelity=0) == []
    # Even with a lower seq (the node restarted), a fresh advert replaces a stale entry.
    reg.upsert(advert(t=90, seq=0), now=101)
    assert [e.node_id for e in reg.candidates(101, gates={"h"}, num_qubits=2, min_fidelity=0)] == [
        "node-a"
    ]


def test_low_fidelity_and_slow_or_lossy_links_mark_a_node_degraded_and_unchosen() -> None:
    reg = registry()
    reg.upsert(advert("good", t=100, fidelity=0.95), now=100)
    reg.upsert(advert("noisy", t=100, fidelity=0.7), now=100)
    reg.upsert(advert("slow", t=100, fidelity=0.99), now=100)
    reg.upsert(advert("lossy", t=100, fidelity=0.99), now=100)
    link = dict(kind="link", reporter="coord", measured_at=100.5)
    reg.quality(QualityReport(node_id="slow", latency_ms=400.0, loss=0.0, **link))  # type: ignore[arg-type]
    reg.quality(QualityReport(node_id="lossy", latency_ms=1.0, loss=0.9, **link))  # type: ignore[arg-type]
    degraded = {e.node_id: reg.degraded(e) for e in reg.entries()}
    assert degraded["good"] == []
    assert degraded["noisy"] == ["fidelity 0.700 < 0.8"]
    assert degraded["slow"] == ["link latency 400.0 ms > 250 ms"]
    assert degraded["lossy"] == ["link loss 0.90 > 0.5"]
    chosen = reg.candidates(101, gates={"h", "cx"}, num_qubits=2, min_fidelity=0)
    assert [e.node_id for e in chosen] == ["good"]


def test_a_newer_fidelity_report_overrides_the_advert_and_can_degrade_the_node() -> None:
    reg = registry()
    reg.upsert(advert(t=100, fidelity=0.95), now=100)
    report = QualityReport(
        kind="fidelity", reporter="coord", node_id="node-a", fidelity=0.6, measured_at=105
    )
    assert reg.quality(report)
    entry = reg.get("node-a")
    assert entry is not None
    assert entry.measured_fidelity == 0.6
    assert reg.degraded(entry)
    older = report.model_copy(update={"fidelity": 0.99, "measured_at": 99})
    assert not reg.quality(older)


def test_queries_filter_by_gate_fidelity_availability_and_qubits() -> None:
    reg = registry()
    reg.upsert(advert("a", gates=("h", "cx", "ccx"), fidelity=0.99, qubits=(1, 10)), now=100)
    reg.upsert(advert("b", gates=("h", "cx"), fidelity=0.9, qubits=(1, 3)), now=100)
    reg.upsert(
        advert("c", gates=("h",), fidelity=0.85, availability=Availability.DRAINING), now=100
    )
    ids = lambda entries: [e.node_id for e in entries]  # noqa: E731
    assert ids(reg.query(100, gate="ccx")) == ["a"]
    assert ids(reg.query(100, min_fidelity=0.9)) == ["a", "b"]
    assert ids(reg.query(100, available=True)) == ["a", "b"]
    assert ids(reg.query(100, available=False)) == ["c"]
    assert ids(reg.query(100, qubits=6)) == ["a"]


def test_candidates_are_ordered_by_fidelity_then_latency_then_id() -> None:
    reg = registry()
    for node, fidelity in (("z", 0.95), ("y", 0.95), ("x", 0.99)):
        reg.upsert(advert(node, fidelity=fidelity), now=100)
    reg.quality(
        QualityReport(kind="link", reporter="c", node_id="z", latency_ms=1, measured_at=100)
    )
    reg.quality(
        QualityReport(kind="link", reporter="c", node_id="y", latency_ms=5, measured_at=100)
    )
    chosen = reg.candidates(100, gates={"h"}, num_qubits=1, min_fidelity=0.9)
    assert [e.node_id for e in chosen] == ["x", "z", "y"]


def test_an_infeasible_request_names_the_missing_gate_or_fidelity() -> None:
    reg = registry()
    reg.upsert(advert("a", gates=("h", "cx", "measure"), fidelity=0.95), now=100)
    assert reg.why_infeasible(100, gates={"ccx"}, num_qubits=3, min_fidelity=0) == (
        "no available node offers `ccx`"
    )
    assert reg.why_infeasible(100, gates={"h", "cx"}, num_qubits=2, min_fidelity=0.99) == (
        "no available node offers `cx`, `h` on 2 qubits with fidelity >= 0.99 (best: 0.950)"
    )
    assert "takes 9 qubits" in reg.why_infeasible(100, gates={"h"}, num_qubits=9, min_fidelity=0)


def test_the_snapshot_is_json_and_lists_each_node_with_its_status() -> None:
    import json

    reg = registry()
    reg.upsert(advert("a"), now=100)
    snap = reg.snapshot(103)
    assert json.loads(json.dumps(snap))["nodes"][0]["status"] == "available"
    assert snap["nodes"][0]["age_s"] == 3.0  # type: ignore[index]
