"""Distributed mode's process roles: `qtask api`, `qtask worker` and `qtask poller`.

Each role is the same code as embedded mode with the Redis store and the NATS JetStream queue
behind the ports. Any number of each may run; they share nothing but Redis, NATS and the
object store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from qtask.adapters.nats_queue import NatsTaskQueue
from qtask.adapters.redis_notices import RedisEndNotices
from qtask.adapters.redis_rate import RedisRateLimiter
from qtask.adapters.redis_remote import RedisRemoteJobs
from qtask.adapters.redis_store import RedisTaskStore
from qtask.application.poller import RemotePoller
from qtask.application.reconciler import Reconciler
from qtask.assembly import wiring
from qtask.config import Settings
from qtask.errors import ConfigError
from qtask.logs import get_logger
from qtask.runtime.health import Check, serve_health
from qtask.runtime.signals import until_signalled
from qtask.runtime.supervision import start_watchdog
from qtask.worker.remote import RemoteSubmitter
from qtask.worker.runner import Worker

if TYPE_CHECKING:  # the API's modules (FastAPI, the circuit parser) load only in `qtask api`
    from fastapi import FastAPI

    from qtask.domain.remote import RemoteBackend
    from qtask.execution.catalog import BackendCatalog

log = get_logger("roles")


def _require_distributed(settings: Settings) -> None:
    if settings.storage.store != "redis" or settings.storage.queue != "nats":
        raise ConfigError(
            "qtask api/worker/poller need storage.store = 'redis' and storage.queue = 'nats' "
            "(env QTASK_STORAGE__STORE=redis QTASK_STORAGE__QUEUE=nats); "
            "for one machine use qtask serve"
        )


def _store(settings: Settings) -> RedisTaskStore:
    return RedisTaskStore(settings.redis.url, prefix=settings.redis.prefix)


def _rate_limiter(settings: Settings, store: RedisTaskStore) -> RedisRateLimiter | None:
    """Per-key request buckets in Redis, so that every API replica enforces one rate."""
    auth = settings.auth
    if not auth.enabled or auth.rate_per_s <= 0:
        return None
    return RedisRateLimiter(store, auth.rate_per_s, auth.burst)


def _queue(settings: Settings, store: RedisTaskStore) -> NatsTaskQueue:
    nats = settings.nats
    return NatsTaskQueue(
        nats.url,
        store,
        stream=nats.stream,
        subject=nats.subject,
        durable=nats.durable,
        ack_wait=nats.ack_wait_s,
        # Unbounded at the NATS level: JetStream keeps a message that reached max_deliver in
        # the work queue but never delivers it again, which would strand its task if that last
        # delivery were lost. The bound is the worker's: on the delivery after the last allowed
        # attempt it records the failure, files a dead letter and acknowledges.
        max_deliver=-1,
    )


class ApiRole:
    """The HTTP API with its parser processes and a reconciler."""

    def __init__(self, settings: Settings) -> None:
        _require_distributed(settings)
        self.settings = settings
        self.store = _store(settings)
        self.queue = _queue(settings, self.store)
        self.parse_pool = wiring.parse_pool(settings)
        self.objects = wiring.object_store(settings)
        self.reconciler = Reconciler(self.store, self.queue, settings.nats.reconcile_interval_s)
        # One subscription per API process to the ends every worker and replica publishes.
        self.notices = RedisEndNotices(settings.redis.url, self.store.ended_channel)
        # One catalog for the process: its remote backends own provider processes once used.
        self.catalog = _catalog(settings)
        # A cancel makes its remote job due now, so a poller cancels it at the provider.
        self.remote_jobs = _remote_parts(settings, self.catalog)[1]
        self.service, self.app = wiring.api_app(
            settings,
            self.store,
            self.queue,
            catalog=self.catalog,
            objects=self.objects,
            parser=self.parse_pool,
            ready_checks={
                "store": wiring.ping_check(self.store),
                "queue": wiring.ping_check(self.queue),
                "parsers": wiring.pool_check(self.parse_pool, "parser"),
                **wiring.optional_ping_check("objects", self.objects),
                **wiring.loop_checks(self.reconciler.loop, self.notices.loop),
            },
            lifespan=self._lifespan,
            notices=self.notices,
            limiter=_rate_limiter(settings, self.store),
            remote_jobs=self.remote_jobs,
        )

    @asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        await self.queue.connect()
        await self.parse_pool.start()
        self.notices.start()
        self.reconciler.start()
        watchdog = start_watchdog(self.settings.supervision.wedged_exit_s)
        log.info("api_started", redis=self.settings.redis.url, nats=self.settings.nats.url)
        try:
            yield
        finally:
            if watchdog is not None:
                await watchdog.stop()
            await self.reconciler.stop()
            await self.notices.close()
            await _close_remote(self.catalog.remotes(), self.remote_jobs)
            await self.parse_pool.close()
            await self.queue.close()
            await self.store.close()
            if self.objects is not None:
                await self.objects.close()


def serve_api(settings: Settings) -> None:
    """Run `qtask api` until it is stopped."""
    from qtask.api import server

    server.run(ApiRole(settings).app, settings)


async def run_worker(settings: Settings) -> None:
    """Run circuits from the queue until SIGTERM, then drain gracefully."""
    _require_distributed(settings)
    store = _store(settings)
    queue = _queue(settings, store)
    me = queue.worker_id
    catalog = _catalog(settings)
    pool = wiring.exec_pool(settings, catalog)
    objects = wiring.object_store(settings)
    # The child processes start (importing Qiskit) while the connections are made.
    await asyncio.gather(queue.connect(), pool.start())
    remotes, jobs = _remote_parts(settings, catalog)
    worker = Worker(
        store,
        queue,
        pool,
        settings.worker,
        worker_id=me,
        heartbeat_s=settings.nats.ack_wait_s / 3,
        objects=objects,
        remote=None if jobs is None else RemoteSubmitter(remotes, jobs, objects),
    )
    worker.start()

    health = await _health(
        settings,
        {
            "store": wiring.ping_check(store),
            "queue": wiring.ping_check(queue),
            "workers": wiring.pool_check(pool, "worker"),
            **wiring.loop_checks(*worker.loops),
        },
    )
    watchdog = start_watchdog(settings.supervision.wedged_exit_s)
    log.info("worker_started", worker_id=me, processes=pool.size)
    await until_signalled()
    log.info("worker_stopping", grace_s=settings.worker.shutdown_grace_s)
    if watchdog is not None:
        await watchdog.stop()
    if health is not None:
        health.close()
    await worker.stop(settings.worker.shutdown_grace_s)
    await _close_remote(remotes, jobs)
    await pool.close()
    await queue.close()
    await store.close()
    if objects is not None:
        await objects.close()
    log.info(
        "worker_stopped", completed=worker.completed, failed=worker.failed, retried=worker.retried
    )


async def run_poller(settings: Settings) -> None:
    """Re-publish stored-but-unpublished tasks, remove expired ones and poll remote jobs, until
    SIGTERM."""
    _require_distributed(settings)
    store = _store(settings)
    queue = _queue(settings, store)
    await queue.connect()
    objects = wiring.object_store(settings)
    reconciler = Reconciler(store, queue, settings.nats.reconcile_interval_s)
    reconciler.start()
    retention = wiring.retention(settings, store, objects)
    if retention is not None:
        retention.start()
    remotes, jobs = _remote_parts(settings, _catalog(settings))
    poller = None if jobs is None else RemotePoller(store, jobs, remotes, objects)
    if poller is not None:
        poller.start()

    health = await _health(
        settings,
        {
            "store": wiring.ping_check(store),
            "queue": wiring.ping_check(queue),
            **wiring.optional_ping_check("objects", objects),
            **wiring.loop_checks(
                reconciler.loop,
                None if retention is None else retention.loop,
                None if poller is None else poller.loop,
            ),
        },
    )
    watchdog = start_watchdog(settings.supervision.wedged_exit_s)
    log.info("poller_started", keep_finished_s=settings.retention.keep_finished_s or None)
    await until_signalled()
    if watchdog is not None:
        await watchdog.stop()
    if health is not None:
        health.close()
    await reconciler.stop()
    if retention is not None:
        await retention.stop()
    if poller is not None:
        await poller.stop()
    await _close_remote(remotes, jobs)
    await queue.close()
    await store.close()
    if objects is not None:
        await objects.close()
    log.info(
        "poller_stopped",
        republished=reconciler.republished,
        expired=0 if retention is None else retention.removed,
    )


def _catalog(settings: Settings) -> BackendCatalog:
    """The process's backends: built once per process and handed to every part that needs them
    (each build makes its own remote backends, each with its own provider process)."""
    from qtask.execution.catalog import build_catalog

    return build_catalog(settings)


def _remote_parts(
    settings: Settings, catalog: BackendCatalog
) -> tuple[dict[str, RemoteBackend], RedisRemoteJobs | None]:
    """The remote backends and their job records, when any remote backend is configured."""
    remotes = catalog.remotes()
    if not remotes:
        return remotes, None
    return remotes, RedisRemoteJobs(settings.redis.url, prefix=settings.redis.prefix)


async def _close_remote(remotes: dict[str, RemoteBackend], jobs: RedisRemoteJobs | None) -> None:
    for backend in remotes.values():
        await backend.close()
    if jobs is not None:
        await jobs.close()


async def _health(settings: Settings, checks: dict[str, Check]) -> asyncio.Server | None:
    port = settings.worker.health_port
    if port == 0:
        return None
    return await serve_health(settings.server.host, port, checks)
