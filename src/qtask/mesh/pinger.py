"""Link monitoring (FR-008): the coordinator pings every connected node each `ping_interval_s`.

Each round measures, per node, the round trip of one PING (lost when no Pong comes within
`ping_timeout_s`) and reports the link as a QualityReport: the last round trip, and the loss
over the last LOSS_WINDOW pings. The report goes to the registry (which marks a slow or lossy
link degraded), to the database with its timestamps, and out on QUALITY_TOPIC for other peers.

Pings are what notices a hung node: a SIGSTOPped process keeps its connections open, so no
disconnect is seen, but its pings are lost. Nodes without a connection are not pinged: the
disconnect already marked them unavailable, and a dial to a dead peer costs ~0.7 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Protocol

from qtask.errors import QTaskError
from qtask.logs import get_logger
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.protocol import PING_PROTOCOL, QUALITY_TOPIC, Ping, Pong, QualityReport
from qtask.mesh.registry import Registry
from qtask.mesh.runtime import MeshPort

log = get_logger("mesh.pinger")

# Loss is the share of the last this-many pings that got no answer.
LOSS_WINDOW = 10


class QualitySink(Protocol):
    """Where reports are persisted (MeshStore.add_quality)."""

    async def add_quality(self, report: QualityReport, received_at: float) -> None: ...


class PingingMesh(MeshPort, Protocol):
    """The host, with what pinging needs besides requests."""

    def connected_peers(self) -> set[str]: ...


class Pinger:
    """One ping round at a time (`round()`); the coordinator runs it as a supervised loop."""

    def __init__(
        self,
        mesh: PingingMesh,
        registry: Registry,
        store: QualitySink,
        settings: CoordinatorSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mesh = mesh
        self._registry = registry
        self._store = store
        self._settings = settings
        self._clock = clock
        self._outcomes: dict[str, deque[bool]] = {}

    async def round(self) -> list[QualityReport]:
        """Ping every connected node in the registry at once; the reports made."""
        connected = self._mesh.connected_peers()
        nodes = [e.node_id for e in self._registry.entries() if e.node_id in connected]
        reports = await asyncio.gather(*(self._ping(node) for node in nodes))
        for report in reports:
            self._registry.quality(report)
            await self._store.add_quality(report, self._clock())
        if reports:
            try:
                for report in reports:
                    await self._mesh.publish(QUALITY_TOPIC, report.model_dump_json().encode())
            except QTaskError as exc:  # others miss one round of link reports; nothing more
                log.warning("quality_publish_failed", error=str(exc))
        return list(reports)

    async def iteration(self) -> None:
        """One round, as a SupervisedLoop iteration."""
        await self.round()

    async def _ping(self, node: str) -> QualityReport:
        nonce = uuid.uuid4().hex
        ping = Ping(nonce=nonce, sent_at=self._clock()).model_dump_json().encode()
        started = time.perf_counter()
        latency: float | None = None
        try:
            raw = await self._mesh.request(
                node, PING_PROTOCOL, ping, timeout=self._settings.ping_timeout_s
            )
            if Pong.model_validate_json(raw).nonce == nonce:
                latency = 1000 * (time.perf_counter() - started)
        except (QTaskError, TimeoutError, ValueError) as exc:
            log.info("mesh_ping_lost", node=node, error=str(exc))
        window = self._outcomes.setdefault(node, deque(maxlen=LOSS_WINDOW))
        window.append(latency is not None)
        loss = 1.0 - sum(window) / len(window)
        if latency is None:  # a lost ping: at least the timeout, so a hung node reads slow
            latency = 1000 * self._settings.ping_timeout_s
        return QualityReport(
            kind="link",
            reporter=self._mesh.peer_id,
            node_id=node,
            peer_id=self._mesh.peer_id,
            latency_ms=round(latency, 3),
            loss=round(loss, 3),
            measured_at=self._clock(),
        )
