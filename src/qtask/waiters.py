"""The waiter registry: long-polling requests waiting for tasks to end, as asyncio futures.

A waiting request costs one `Watch` (a future and the ids it watches) and nothing else: no
database connection, no thread. Whatever learns that tasks ended in this process calls
`ended(ids)` (the embedded store after its write, the Redis subscriber on a notice from any
process); `resync()` wakes every watch so each re-reads the store, for when notices may have
been missed (the subscription reconnected). A woken watch does not say what the task became:
its owner re-reads the store, which stays the only source of truth.

The rule that keeps wake-ups from being lost: register the watch first, then read the store.
An end recorded after the read is then always seen by the watch. No I/O here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Watch:
    """One waiting request's interest in some task ids; `wait()` returns when one may have ended."""

    def __init__(self) -> None:
        self.ids: frozenset[str] = frozenset()
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        """Wake the current wait (or the next one, if none is under way)."""
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        """Return once woken since the last wait; the caller bounds it with a timeout."""
        await self._future
        self._future = asyncio.get_running_loop().create_future()


class Waiters:
    """Watches by task id, for one process; see the module docstring."""

    def __init__(self) -> None:
        self._by_id: dict[str, set[Watch]] = {}

    @contextmanager
    def watch(self, task_ids: Iterable[str]) -> Iterator[Watch]:
        """Watch these ids for as long as the block runs; enter it before reading the store."""
        watch = Watch()
        self._add(watch, frozenset(task_ids))
        try:
            yield watch
        finally:
            self._add(watch, frozenset())

    def narrow(self, watch: Watch, task_ids: Iterable[str]) -> None:
        """Watch only these ids from now on (the ones still pending at the last read)."""
        self._add(watch, frozenset(task_ids))

    def ended(self, task_ids: Iterable[str]) -> None:
        """These tasks ended (or were removed or cancelled): wake whoever watches them."""
        for task_id in task_ids:
            for watch in self._by_id.get(task_id, ()):
                watch.wake()

    def resync(self) -> None:
        """Ends may have been missed: wake every watch, so that each re-reads the store."""
        for watches in self._by_id.values():
            for watch in watches:
                watch.wake()

    @property
    def watched(self) -> int:
        """How many task ids have at least one watch (for tests and metrics)."""
        return len(self._by_id)

    def _add(self, watch: Watch, ids: frozenset[str]) -> None:
        for task_id in watch.ids - ids:
            watches = self._by_id[task_id]
            watches.discard(watch)
            if not watches:
                del self._by_id[task_id]
        for task_id in ids - watch.ids:
            self._by_id.setdefault(task_id, set()).add(watch)
        watch.ids = ids
