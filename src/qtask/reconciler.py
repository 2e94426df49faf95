"""The reconciler: publish tasks that were stored but never reached the queue.

An API process can die, or lose NATS, between storing a task and publishing it. The store keeps
a ledger of tasks not yet confirmed as published; this loop re-publishes the old entries. It
runs in every API process and in `qtask poller`; concurrent passes are harmless because
JetStream drops a second message with the same id.
"""

from __future__ import annotations

import time

from qtask.constants import RECONCILE_GRACE_SECONDS
from qtask.domain.ports import TaskQueue, TaskStore
from qtask.logs import get_logger
from qtask.periodic import Periodic

log = get_logger("reconciler")

# Tasks re-published per pass; a backlog larger than this drains over several passes.
_BATCH = 1000


class Reconciler(Periodic):
    """Re-publishes unpublished tasks every `interval` seconds."""

    name = "reconciler"

    def __init__(self, store: TaskStore, queue: TaskQueue, interval: float) -> None:
        super().__init__(interval)
        self._store = store
        self._queue = queue
        self.republished = 0

    async def run_once(self) -> int:
        """One pass; return how many tasks were re-published."""
        stale = await self._store.unpublished(time.time() - RECONCILE_GRACE_SECONDS, _BATCH)
        if stale:
            await self._queue.publish(stale)
            self.republished += len(stale)
            log.warning("tasks_republished", count=len(stale), ids=[t.id for t in stale[:10]])
        return len(stale)
