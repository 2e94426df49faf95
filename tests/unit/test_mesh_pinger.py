"""Link monitoring (FR-008): each ping round reports latency and loss per connected node,
persists the reports, publishes them, and a node that stops answering reads degraded."""

from __future__ import annotations

import time

from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.pinger import Pinger
from qtask.mesh.protocol import QUALITY_TOPIC, Advert, Availability, NoiseSpec, QualityReport
from qtask.mesh.registry import Registry, Thresholds
from qtask.mesh.testing import FakeMesh, FakeNode, InMemoryMeshStore


def advert(node: str) -> Advert:
    now = time.time()
    return Advert(
        node_id=node, gates=("h",), qubit_range=(1, 2), fidelity=0.99, fidelity_measured_at=now,
        noise=NoiseSpec(), availability=Availability.AVAILABLE, capacity=1, in_use=0,
        timestamp=now, seq=1,
    )  # fmt: skip


async def test_a_round_reports_each_connected_node_and_a_hung_one_turns_degraded() -> None:
    settings = CoordinatorSettings(ping_timeout_s=0.2, degraded_latency_ms=150)
    registry = Registry(Thresholds(ttl_s=60, degraded_latency_ms=150, degraded_loss=0.5))
    mesh, store = FakeMesh(), InMemoryMeshStore()
    for node in ("fast", "hung", "gone"):
        registry.upsert(advert(node), time.time())
    mesh.add(FakeNode("fast"))
    hung = mesh.add(FakeNode("hung"))
    mesh.add(FakeNode("gone", down=True))  # not connected: not pinged
    pinger = Pinger(mesh, registry, store, settings)

    first = {r.node_id: r for r in await pinger.round()}
    assert set(first) == {"fast", "hung"}
    assert first["fast"].loss == 0.0
    assert first["fast"].latency_ms is not None
    assert first["fast"].latency_ms < 150

    hung.ping_delay_s = 1.0  # answers no more within the timeout
    second = {r.node_id: r for r in await pinger.round()}
    assert second["hung"].loss == 0.5  # one of its two pings lost
    assert second["hung"].latency_ms == 200.0
    entries = {e.node_id: e for e in registry.entries()}
    assert registry.degraded(entries["hung"]) == ["link latency 200.0 ms > 150 ms"]
    assert registry.degraded(entries["fast"]) == []
    assert len(store.quality) == 4
    published = [QualityReport.model_validate_json(d) for t, d in mesh.published]
    assert {t for t, _ in mesh.published} == {QUALITY_TOPIC}
    assert [(p.kind, p.reporter) for p in published][:1] == [("link", "coordinator")]
