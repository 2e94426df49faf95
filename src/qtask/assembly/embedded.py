"""Embedded mode: the API, the worker loop and the child processes in one `qtask serve`.

This module wires the SQLite adapter, the parser pool and the worker pool to the service and
the API; it is the only place that knows which adapters embedded mode uses.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fastapi import FastAPI

from qtask.adapters.sqlite_store import SQLiteTaskStore
from qtask.assembly import wiring
from qtask.config import Settings
from qtask.constants import DB_FILE, LOCK_FILE
from qtask.errors import ConfigError
from qtask.logs import get_logger
from qtask.worker.runner import Worker

if TYPE_CHECKING:
    from qtask.adapters.sqlite_remote import SQLiteRemoteJobs
    from qtask.application.poller import RemotePoller
    from qtask.domain.remote import RemoteBackend
    from qtask.worker.remote import RemoteSubmitter

log = get_logger("embedded")


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data directory for this process, or raise ConfigError naming its holder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"{data_dir} is in use by {holder}; give each qtask serve its own --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"qtask serve (pid {os.getpid()})\n")
    handle.flush()
    return handle


def serve(settings: Settings) -> None:
    """Run `qtask serve` until it is stopped: the data directory is held for the process's
    life; ConfigError unless the store is SQLite or while another process holds the directory."""
    from qtask.api import server

    if settings.storage.store != "sqlite":
        raise ConfigError(
            "qtask serve runs embedded mode (storage.store = 'sqlite'); "
            "for Redis and NATS run qtask api and qtask worker"
        )
    lock = lock_data_dir(settings.storage.data_dir)
    try:
        server.run(EmbeddedService(settings).app, settings)
    finally:
        lock.close()


class EmbeddedService:
    """Everything `qtask serve` runs, built from the settings."""

    def __init__(self, settings: Settings) -> None:
        from qtask.execution.catalog import build_catalog

        self.settings = settings
        self._remotes: list[RemoteBackend] = []
        self._remote_jobs: SQLiteRemoteJobs | None = None
        # Built once: each build makes its own remote backends, each with its own provider
        # process (176-286 MiB for IBM or Braket) once used.
        self.catalog = build_catalog(settings)
        remote_names = frozenset(self.catalog.remotes())
        self.store = SQLiteTaskStore(
            settings.storage.data_dir / DB_FILE,
            # A remote task's provider job must not be submitted before its record commits.
            early_handover=lambda task: task.backend not in remote_names,
        )
        self.parse_pool = wiring.parse_pool(settings)
        self.exec_pool = wiring.exec_pool(settings, self.catalog)
        self.objects = wiring.object_store(settings)
        self.retention = wiring.retention(settings, self.store, self.objects)
        self.poller, remote = self._remote_parts()
        self.worker = Worker(
            self.store,
            self.store,
            self.exec_pool,
            settings.worker,
            objects=self.objects,
            remote=remote,
        )
        self.service, self.app = wiring.api_app(
            settings,
            self.store,
            self.store,
            catalog=self.catalog,
            objects=self.objects,
            parser=self.parse_pool,
            ready_checks={
                "store": wiring.ping_check(self.store),
                "workers": wiring.pool_check(self.exec_pool, "worker"),
                "parsers": wiring.pool_check(self.parse_pool, "parser"),
                **wiring.optional_ping_check("objects", self.objects),
                **wiring.loop_checks(
                    *self.worker.loops,
                    None if self.retention is None else self.retention.loop,
                    None if self.poller is None else self.poller.loop,
                ),
            },
            lifespan=self._lifespan,
            notices=self.store,  # the worker ends tasks in this process, through this store
            remote_jobs=self._remote_jobs,
        )

    def _remote_parts(self) -> tuple[RemotePoller | None, RemoteSubmitter | None]:
        """The poller and the worker's submitter, when remote backends are configured."""
        remotes = self.catalog.remotes()
        if not remotes:
            return None, None
        from qtask.adapters.sqlite_remote import SQLiteRemoteJobs
        from qtask.application.poller import RemotePoller
        from qtask.worker.remote import RemoteSubmitter

        self._remotes = list(remotes.values())
        jobs = SQLiteRemoteJobs(self.store.db)
        self._remote_jobs = jobs
        return (
            RemotePoller(self.store, jobs, remotes, self.objects),
            RemoteSubmitter(remotes, jobs, self.objects),
        )

    @asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        recovered = await self.store.recover()
        if recovered:
            log.warning("tasks_recovered", count=recovered)
        await self.parse_pool.start()
        await self.exec_pool.start()
        self.worker.start()
        if self.retention is not None:
            self.retention.start()
        if self.poller is not None:
            assert self._remote_jobs is not None
            # Polled at once: a poller that died with the last process left its claims.
            await self._remote_jobs.recover(time.time())
            self.poller.start()
        counts = await self.store.counts()
        log.info("service_started", processes=self.exec_pool.size, tasks=counts)
        try:
            yield
        finally:
            log.info("service_stopping", grace_s=self.settings.worker.shutdown_grace_s)
            if self.retention is not None:
                await self.retention.stop()
            await self.worker.stop(self.settings.worker.shutdown_grace_s)
            if self.poller is not None:
                await self.poller.stop()
            for backend in self._remotes:
                await backend.close()
            await self.exec_pool.close()
            await self.parse_pool.close()
            await self.store.close()
            if self.objects is not None:
                await self.objects.close()
            log.info("service_stopped")
