"""Builds the parts every process role is made of, from the settings.

`assembly.embedded` (qtask serve) and `assembly.roles` (qtask api / worker / poller) assemble
these; this is the only module that knows which class implements which port for which setting.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol

from qtask.config import Settings
from qtask.domain.ports import EndNotices, ObjectStore, RateLimiter, TaskQueue, TaskStore
from qtask.domain.remote import RemoteBackend, RemoteJobStore
from qtask.runtime.health import Check
from qtask.runtime.pool import ChildPool
from qtask.runtime.supervision import SupervisedLoop

if TYPE_CHECKING:  # the worker role never imports FastAPI: these load only in api_app
    from fastapi import FastAPI

    from qtask.application.retention import Retention
    from qtask.application.service import TaskService
    from qtask.execution.catalog import BackendCatalog


class _Pingable(Protocol):
    async def ping(self) -> None: ...


def ping_check(component: _Pingable) -> Check:
    """A readiness check that passes when `component.ping()` does."""

    async def check() -> str:
        await component.ping()
        return "ok"

    return check


def pool_check(pool: ChildPool, kind: str) -> Check:
    """A readiness check that passes while at least one of the pool's processes runs."""

    async def check() -> str:
        alive = pool.alive()
        if alive == 0:
            raise RuntimeError(f"no {kind} process is running")
        return f"ok ({alive}/{pool.size} processes)"

    return check


def loop_checks(*loops: SupervisedLoop | None) -> dict[str, Check]:
    """{loop name: check} for each supervised loop given: it fails when the loop is stale or died.

    None stands for a loop this process does not run (retention switched off) and is skipped.
    """
    return {loop.name: loop.check() for loop in loops if loop is not None}


def optional_ping_check(name: str, component: _Pingable | None) -> dict[str, Check]:
    """{name: ping check} for a configured component, {} for an absent one."""
    return {} if component is None else {name: ping_check(component)}


# Modules the forkserver imports once, so that every child starts with Qiskit and Aer loaded.
_PRELOAD = ["qtask.execution.local", "qtask.circuits.parse_child"]
# OpenMP threads that spin while idle steal the core from the other worker processes; passive
# waiting removed a 10x collapse when two processes shared two cores (see FACTS.md).
_CHILD_ENV = {"OMP_WAIT_POLICY": "passive"}


def parse_pool(settings: Settings) -> ChildPool:
    """Child processes that parse circuits the API's event loop should not."""
    return ChildPool(
        settings.limits.parse_processes,
        "qtask.circuits.parse_child:parse",
        init_path="qtask.circuits.parse_child:warm_up",
        preload=_PRELOAD,
        env=_CHILD_ENV,
    )


def exec_pool(settings: Settings, catalog: BackendCatalog) -> ChildPool:
    """Child processes that run circuits on the local backends (Aer, ideal or noisy) of
    `catalog`."""
    worker = settings.worker
    threads = worker.threads_per_process or max(1, (os.cpu_count() or 1) // worker.processes)
    return ChildPool(
        worker.processes,
        "qtask.execution.local:run_items",
        init_path="qtask.execution.local:init_process",
        # The statevector limit decides each circuit's method and the memory a run may take.
        init_args=(
            threads,
            settings.limits.max_statevector_mb,
            worker.aer_device,
            catalog.devices(),
        ),
        preload=_PRELOAD,
        env=_CHILD_ENV,
    )


def object_store(settings: Settings) -> ObjectStore | None:
    """The configured object store, or None when circuits and results stay in the task store."""
    url = settings.storage.objects_url
    if not url:
        return None
    from qtask.adapters.objects import open_object_store

    return open_object_store(url)


def retention(
    settings: Settings, store: TaskStore, objects: ObjectStore | None
) -> Retention | None:
    """The retention pass, or None when ended tasks are kept forever (the default)."""
    keep = settings.retention.keep_finished_s
    if keep <= 0:
        return None
    from qtask.application.retention import Retention

    return Retention(store, objects, keep, settings.retention.interval_s)


def api_app(
    settings: Settings,
    store: TaskStore,
    queue: TaskQueue,
    *,
    catalog: BackendCatalog,
    objects: ObjectStore | None,
    parser: ChildPool,
    ready_checks: dict[str, Check],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    notices: EndNotices,
    limiter: RateLimiter | None = None,
    remote_jobs: RemoteJobStore | None = None,
) -> tuple[TaskService, FastAPI]:
    """The task service and the HTTP API around it, with the limits and keys of `settings`.

    `catalog`: the process's one catalog (its remote backends each own a provider process, so
    the worker and the poller of the same process must be handed the same objects).

    `notices` tell this process when tasks end, which wakes its long polls. `limiter` holds
    the per-key request buckets when they are shared between API processes; without one, this
    process holds them. `remote_jobs`: the remote job records, so that a cancel reaches the
    provider at the next poller pass.
    """
    from qtask.adapters.local_rate import TokenBuckets
    from qtask.api.app import create_app, streams_from
    from qtask.api.auth import Gate
    from qtask.application.service import TaskService
    from qtask.application.waiters import Waiters
    from qtask.circuits.ingestor import CircuitIngestor

    waiters = Waiters()
    notices.listen(waiters.ended, waiters.resync)
    if limiter is None and settings.auth.enabled and settings.auth.rate_per_s > 0:
        limiter = TokenBuckets(settings.auth.rate_per_s, settings.auth.burst)
    remotes = list(catalog.remotes().values())
    if remotes:  # their capabilities are re-read every minute, not only on GET /backends
        lifespan = _refreshing(lifespan, remotes)

    service = TaskService(
        store,
        queue,
        CircuitIngestor(settings.limits, parser),
        settings.limits,
        objects=objects,
        max_pending_per_owner=settings.auth.max_pending_tasks if settings.auth.enabled else 0,
        waiters=waiters,
        backends=catalog,
        remote_jobs=remote_jobs,
    )
    app = create_app(
        service,
        max_body_bytes=settings.limits.max_body_bytes,
        max_batch_body_bytes=settings.limits.max_batch_body_bytes,
        body_timeout_s=settings.limits.body_timeout_s,
        gate=Gate(settings.auth, limiter),
        ready_checks=ready_checks,
        lifespan=lifespan,
        streams=streams_from(settings.server),
    )
    return service, app


def _refreshing(
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    remotes: list[RemoteBackend],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """`lifespan`, with the remote backends' capabilities re-read periodically while it runs."""
    from qtask.execution.refresh import CapabilityRefresher

    @asynccontextmanager
    async def refreshing(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(app):
            refresher = CapabilityRefresher(remotes)
            refresher.start()
            try:
                yield
            finally:
                await refresher.stop()

    return refreshing
