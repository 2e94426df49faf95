"""`qtask coordinator`: assembles the coordinator process from the settings.

One asyncio process: uvicorn serves the FR-009 API (qtask.api.server, with its connection
guards), and its lifespan starts and stops the rest in order: the database (migrated to HEAD)
and the registry reloaded from it as `stale`; the libp2p host (MeshHost: adverts through
AdvertInbox into the registry, quality reports, disconnect notices); a dial to every reloaded
node's address, so a restarted coordinator finds its nodes again; the runtime's recovery of
unfinished jobs; the ping loop; the quality reports' retention loop; with
`[supervision] wedged_exit_s`, the wedge watchdog (the process exits 70 when a loop or the
event loop stays stuck, for compose's restart policy). SIGTERM: uvicorn stops
taking requests, then the lifespan stops the loops, the runtime (jobs stay in the database
for the next start), the host and the database.

This is the only module that knows which classes make a coordinator.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError

from qtask import __version__
from qtask.adapters.local_rate import TokenBuckets
from qtask.api.auth import Gate
from qtask.circuits.ingest import Limits
from qtask.circuits.ingestor import limits_from
from qtask.config import Settings
from qtask.errors import ConfigError, MeshPeerError, QTaskError
from qtask.logs import get_logger
from qtask.mesh.adverts import AdvertInbox
from qtask.mesh.api import Coordinator, create_app
from qtask.mesh.dag import StateFiles
from qtask.mesh.host import MeshHost
from qtask.mesh.ir import ir_from_qasm
from qtask.mesh.pinger import Pinger
from qtask.mesh.protocol import ADVERT_TOPIC, QUALITY_TOPIC, Advert, CircuitIR, QualityReport
from qtask.mesh.registry import Registry, Thresholds
from qtask.mesh.retention import QualityRetention
from qtask.mesh.runtime import Compile, PlanJob, Runtime
from qtask.mesh.store import MeshStore, open_migrated
from qtask.runtime.health import Check
from qtask.runtime.supervision import SupervisedLoop, start_watchdog

log = get_logger("mesh.coordinator")


def qasm_compiler(limits: Limits) -> Compile:
    """OpenQASM -> the IR, through qtask's own ingestion (the parse the API already checked)."""

    def compile_qasm(qasm: str) -> CircuitIR:
        return ir_from_qasm(qasm, limits)

    return compile_qasm


class CoordinatorProcess:
    """Everything `qtask coordinator` runs, built from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        mesh = settings.mesh.coordinator
        self.started_at = time.time()
        self.store = MeshStore(mesh.database)
        self.registry = Registry(
            Thresholds(
                ttl_s=mesh.advert_ttl_s,
                degraded_fidelity=mesh.degraded_fidelity,
                degraded_latency_ms=mesh.degraded_latency_ms,
                degraded_loss=mesh.degraded_loss,
            )
        )
        self.host = MeshHost(
            listen=mesh.listen, bootstrap=mesh.bootstrap, identity_file=mesh.identity_file
        )
        self.host.subscribe(ADVERT_TOPIC, AdvertInbox(self._on_advert))
        self.host.subscribe(QUALITY_TOPIC, self._on_quality)
        self.host.on_peer(self._on_peer)
        limits = limits_from(settings.limits)
        # FR-010: completed fragments' output states (and each job's plan) beside the database.
        states = StateFiles(mesh.database.with_name(mesh.database.name + ".states"))
        hook = _import_planner(mesh.planner_hook)
        # auth.max_pending_tasks holds per key for mesh jobs as for qtask's tasks.
        self.runtime = Runtime(
            self.store, self.registry, self.host, mesh, qasm_compiler(limits),
            states=states, plan_job=hook,
            max_pending_per_owner=settings.auth.max_pending_tasks if settings.auth.enabled else 0,
        )  # fmt: skip
        self.pinger = Pinger(self.host, self.registry, self.store, mesh)
        self.ping_loop = SupervisedLoop(
            "mesh_pinger",
            self.pinger.iteration,
            interval=mesh.ping_interval_s + mesh.ping_timeout_s,
            pause=mesh.ping_interval_s,
        )
        self.retention = QualityRetention(self.store, mesh)
        self.retention_loop = self.retention.loop()
        self._host_up = False
        self._tasks: set[asyncio.Task[Any]] = set()
        coordinator = Coordinator(
            runtime=self.runtime,
            registry=self.registry,
            limits=limits,
            health=self.health,
            job_counts=self.store.job_counts,
        )
        # The per-key request buckets live in this process (one coordinator per mesh).
        limiter = (
            TokenBuckets(settings.auth.rate_per_s, settings.auth.burst)
            if settings.auth.enabled and settings.auth.rate_per_s > 0
            else None
        )
        self.app = create_app(
            settings,
            coordinator,
            ready_checks=self._ready_checks(),
            lifespan=self._lifespan,
            gate=Gate(settings.auth, limiter),
        )

    # Inputs from the mesh.

    async def _on_advert(self, advert: Advert) -> None:
        now = time.time()
        if self.registry.upsert(advert, now):
            await self.store.save_advert(advert, now)

    async def _on_quality(self, signer: str, data: bytes) -> None:
        if signer == self.host.peer_id:
            return  # our own link reports, already taken by the pinger
        try:
            report = QualityReport.model_validate_json(data)
        except ValidationError as exc:
            log.warning("quality_report_rejected", signer=signer, reason="schema", detail=str(exc))
            return
        if report.reporter != signer:
            log.warning("quality_report_rejected", signer=signer, reason="forged",
                        detail=f"reporter {report.reporter} is not the signer")  # fmt: skip
            return
        self.registry.quality(report)
        await self.store.add_quality(report, time.time())

    def _on_peer(self, peer: str, connected: bool) -> None:
        if not connected:
            self.registry.disconnected(peer, time.time())
            log.info("mesh_node_disconnected", node=peer)

    # Health.

    def health(self) -> dict[str, Any]:
        """/health's body: the coordinator, its database, its libp2p host, its nodes."""
        try:
            self.store.db.read(lambda conn: conn.execute("SELECT 1").fetchone())
            database = "ok"
        except QTaskError as exc:
            database = f"failing: {exc}"
        now = time.time()
        available = self.registry.query(now, available=True)
        ok = database == "ok" and self._host_up
        return {
            "status": "ok" if ok else "failing",
            "coordinator": {
                "version": __version__,
                "uptime_s": round(now - self.started_at, 3),
                "jobs_in_flight": self.runtime.active(),
            },
            "database": database,
            "libp2p": {
                "status": "ok" if self._host_up else "down",
                "peer_id": self.host.peer_id,
                "addrs": list(self.host.addrs),
                "connected_peers": len(self.host.connected_peers()) if self._host_up else 0,
            },
            "nodes": {"known": len(self.registry), "available": len(available)},
        }

    def _ready_checks(self) -> dict[str, Check]:
        async def database() -> str:
            await self.store.ping()
            return "ok"

        async def host() -> str:
            if not self._host_up:
                raise RuntimeError("the libp2p host is not running")
            return f"ok ({len(self.host.connected_peers())} peers)"

        return {
            "database": database,
            "libp2p": host,
            "mesh_pinger": self.ping_loop.check(),
            "mesh_quality_retention": self.retention_loop.check(),
        }

    # Life cycle.

    @asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        self.registry.load(self.store.adverts())
        await self.host.start()
        self._host_up = True
        log.info("coordinator_started", peer_id=self.host.peer_id, addrs=list(self.host.addrs),
                 stale_nodes=len(self.registry))  # fmt: skip
        for entry in self.registry.entries():
            self._spawn(self._redial(entry.advert))
        recovered = await self.runtime.recover()
        if recovered:
            log.warning("mesh_jobs_recovered", count=recovered)
        self.ping_loop.start()
        self.retention_loop.start()
        watchdog = start_watchdog(self.settings.supervision.wedged_exit_s)
        try:
            yield
        finally:
            log.info("coordinator_stopping")
            if watchdog is not None:
                await watchdog.stop()
            await self.retention_loop.stop()
            await self.ping_loop.stop()
            for task in self._tasks:
                task.cancel()
            await self.runtime.stop()
            self._host_up = False
            await self.host.stop()
            await self.store.close()
            log.info("coordinator_stopped")

    async def _redial(self, advert: Advert) -> None:
        """Dial a node known from before a restart; it re-advertises over the connection."""
        for addr in advert.addrs:
            try:
                await self.host.connect(addr)
                return
            except (MeshPeerError, ValueError) as exc:
                log.info("mesh_redial_failed", node=advert.node_id, addr=addr, error=str(exc))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def migrate_only(settings: Settings, to: int) -> list[str]:
    """`qtask coordinator --migrate-to N`: move the database to version N and stop."""
    return open_migrated(settings.mesh.coordinator.database, to)


def run(settings: Settings) -> None:
    """Serve the coordinator until SIGTERM or SIGINT."""
    from qtask.api import server

    server.run(CoordinatorProcess(settings).app, settings)


def _import_planner(path: str | None) -> PlanJob | None:
    """The planner a `[mesh.coordinator] planner_hook` setting names ("module:function")."""
    if path is None:
        return None
    module, _, name = path.partition(":")
    try:
        planner: PlanJob = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"mesh.coordinator.planner_hook: cannot import {path!r}: {exc}") from exc
    return planner
