"""The waiter registry: long-polling requests waiting for tasks to end, as asyncio futures.

A waiting request costs one `Watch` (a future and the ids it watches) and nothing else: no
database connection, no thread. Whatever learns that tasks ended in this process calls
`ended(ids)` (the embedded store after its write, the Redis subscriber on a notice from any
process); `resync()` wakes every watch so each re-reads the store, for when notices may have
been missed (the subscription reconnected). A woken watch says which of its ids ended (after a
resync: that any may have), not what they became: its owner re-reads those from the store,
which stays the only source of truth. `BatchedReads` makes the re-reads of waiters woken
together one store call.

The rule that keeps wake-ups from being lost: register the watch first, then read the store.
An end recorded after the read is then always seen by the watch. No I/O here (BatchedReads
calls the store function it is given).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from qtask.domain.task import TaskOutcome


class Watch:
    """One waiting request's interest in some task ids; `wait()` returns when one may have ended,
    saying which."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ended: set[str] = set()
        self._any = False  # a resync: any of the ids may have ended

    def wake(self, task_id: str | None = None) -> None:
        """Wake the current wait (or the next one, if none is under way): `task_id` ended, or,
        without one, any of the watched ids may have."""
        if task_id is None:
            self._any = True
        else:
            self._ended.add(task_id)
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> frozenset[str] | None:
        """Return once woken since the last wait: the ids said to have ended since then, or
        None when any of them may have (re-read them all)."""
        await self._future
        self._future = asyncio.get_running_loop().create_future()
        ended, self._ended = frozenset(self._ended), set()
        any_ended, self._any = self._any, False
        return None if any_ended else ended


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

    def forget(self, watch: Watch, task_ids: Iterable[str]) -> None:
        """Stop watching these ids (they ended); costs what it names, not what the watch holds."""
        for task_id in task_ids:
            if task_id in watch.ids:
                watch.ids.discard(task_id)
                watches = self._by_id[task_id]
                watches.discard(watch)
                if not watches:
                    del self._by_id[task_id]

    def ended(self, task_ids: Iterable[str]) -> None:
        """These tasks ended (or were removed or cancelled): wake whoever watches them."""
        for task_id in task_ids:
            for watch in self._by_id.get(task_id, ()):
                watch.wake(task_id)

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
        watch.ids = set(ids)


Outcomes = Callable[[Sequence[str]], Awaitable[Mapping[str, TaskOutcome]]]

# Ids one batched read asks for at most (a Redis pipeline, an SQLite `IN (...)`).
BATCHED_READ_MAX_IDS = 512


class BatchedReads:
    """Reads of outcomes asked in the same event-loop turn, sent to the store as one call.

    A burst of ends wakes many waiters in one turn, and each re-reads; one round trip for all
    of them instead of one each keeps the answers prompt when many tasks end at once.
    """

    def __init__(self, outcomes: Outcomes) -> None:
        self._outcomes = outcomes
        self._batch: tuple[list[str], asyncio.Future[Mapping[str, TaskOutcome]]] | None = None

    async def read(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        """The outcomes of those of `task_ids` that exist."""
        if self._batch is None or len(self._batch[0]) + len(task_ids) > BATCHED_READ_MAX_IDS:
            loop = asyncio.get_running_loop()
            self._batch = ([], loop.create_future())
            loop.call_soon(self._send, self._batch)
        wanted, future = self._batch
        wanted.extend(task_ids)
        # Shielded: a waiter that goes away (its client disconnected) leaves the others' read.
        found = await asyncio.shield(future)
        return {task_id: found[task_id] for task_id in task_ids if task_id in found}

    def _send(self, batch: tuple[list[str], asyncio.Future[Mapping[str, TaskOutcome]]]) -> None:
        if self._batch is batch:
            self._batch = None
        wanted, future = batch
        call = asyncio.ensure_future(self._outcomes(list(dict.fromkeys(wanted))))

        def settle(done: asyncio.Future[Mapping[str, TaskOutcome]]) -> None:
            if future.cancelled():
                return
            if done.cancelled():
                future.cancel()
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())

        call.add_done_callback(settle)
