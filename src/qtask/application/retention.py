"""Retention: ended tasks and their objects are removed `retention.keep_finished_s` after they
ended. Runs in `qtask poller` (distributed) and inside `qtask serve` (embedded); off when the
setting is 0, the default. A removed task reads "Task not found." like one that never existed.

Objects go first and the record last, so a pass that dies midway leaves a record that the next
pass finds again, never an object nothing points to.
"""

from __future__ import annotations

import asyncio
import time

from qtask import metrics
from qtask.domain.ports import ObjectStore, TaskStore
from qtask.logs import get_logger
from qtask.runtime.periodic import Periodic

log = get_logger("retention")

# Tasks removed per batch, and batches per pass: a pass does bounded work, and a backlog (the
# first pass after retention is turned on) drains over several passes.
_BATCH = 500
_BATCHES_PER_PASS = 20
_DELETES_AT_ONCE = 32


class Retention(Periodic):
    """Removes tasks that ended more than `keep_s` seconds ago, every `interval` seconds."""

    name = "retention"

    def __init__(
        self, store: TaskStore, objects: ObjectStore | None, keep_s: float, interval: float
    ) -> None:
        super().__init__(interval)
        self._store = store
        self._objects = objects
        self._keep_s = keep_s
        self.removed = 0

    async def run_once(self) -> int:
        """One pass; return how many tasks were removed."""
        before = time.time() - self._keep_s
        removed = 0
        for _ in range(_BATCHES_PER_PASS):
            tasks = await self._store.expired(before, _BATCH)
            if not tasks:
                break
            if self._objects is not None:
                keys = [k for t in tasks for k in (t.circuit_object, t.result_object) if k]
                await self._delete_objects(self._objects, keys)
            removed += await self._store.remove(tasks)
            if len(tasks) < _BATCH:
                break
        if removed:
            self.removed += removed
            metrics.TASKS_EXPIRED.inc(removed)
            log.info("tasks_expired", count=removed, keep_s=self._keep_s)
        return removed

    @staticmethod
    async def _delete_objects(objects: ObjectStore, keys: list[str]) -> None:
        limit = asyncio.Semaphore(_DELETES_AT_ONCE)

        async def delete(key: str) -> None:
            async with limit:
                await objects.delete(key)

        await asyncio.gather(*map(delete, keys))
