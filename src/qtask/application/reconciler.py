"""The reconciler: make the queue hold every task the store says is waiting for a worker.

Two gaps are closed here, and nothing else:

- An API process can die, or lose NATS, between storing a task and publishing it. The store keeps
  a ledger of tasks not yet confirmed as published; each pass re-publishes the old entries.
- NATS can lose its stream (volume lost, stream deleted, cluster rebuilt) while the store still
  holds tasks as queued or running: their messages are gone, so no worker would ever get them.
  The store remembers which stream it last saw (a compare-and-set marker that every process
  shares and that outlives restarts); a pass that finds a different stream, or one whose
  sequence numbers went backwards, re-publishes every queued and running task once, page by
  page, with the marker as the cursor, so a pass that dies half-way is resumed by the next.
  A stream that is merely old is never re-published: a healthy backlog older than JetStream's
  duplicate window would otherwise be delivered, and run, twice.

It runs in every API process and in `qtask poller`; concurrent passes are harmless because
JetStream drops a second message with the same id within its duplicate window, and only the
process that moved the marker re-publishes after a loss. The queue also reports when it finds
its stream or consumer gone (a publish, a fetch or a reconnect); that triggers a check at once
instead of at the next pass.

Its first pass also has the store bring its indexes up to date with tasks an older qtask stored
(the active index before the passes, which read it; the listings in the background, since a
store upgraded with a million tasks takes tens of seconds, which would hold the passes up long
enough for /ready to call the loop stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, replace

from qtask.constants import RECONCILE_GRACE_SECONDS
from qtask.domain.ports import StreamQueue, StreamState, TaskStore
from qtask.logs import get_logger
from qtask.runtime.periodic import Periodic

log = get_logger("reconciler")

# Tasks re-published per batch; a backlog larger than this drains over several batches.
_BATCH = 1000
# The store marker that holds the stream last seen and the progress of a re-publish after a loss.
STREAM_MARKER = "queue_stream"
# A re-publish whose marker has not moved for this long is taken over by another process: its
# owner died or lost its connections. Owners move it at least once per pass (every few seconds);
# the margin covers clocks of different hosts that disagree by a few seconds.
REPAIR_STALL_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class StreamMark:
    """The stream the store last saw and, while one runs, how far a re-publish after its loss got.

    `cursor` is None when nothing is to be done; otherwise tasks with ids up to `cursor` ("" for
    none yet) were re-published into `stream` by `owner`, last at `at` (epoch seconds).
    """

    stream: str
    last_seq: int
    cursor: str | None = None
    owner: str | None = None
    at: float = 0.0

    def dump(self) -> str:
        """The marker's stored form."""
        return json.dumps(
            {
                "stream": self.stream,
                "last_seq": self.last_seq,
                "cursor": self.cursor,
                "owner": self.owner,
                "at": self.at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, raw: str) -> StreamMark:
        """Read a stored marker."""
        data = json.loads(raw)
        return cls(
            stream=str(data["stream"]),
            last_seq=int(data["last_seq"]),
            cursor=None if data.get("cursor") is None else str(data["cursor"]),
            owner=None if data.get("owner") is None else str(data["owner"]),
            at=float(data.get("at") or 0.0),
        )


def stream_lost(mark: StreamMark, seen: StreamState) -> bool:
    """Whether `seen` is not the stream `mark` recorded: another one, or the same one rewound.

    A healthy stream keeps its identity and its last sequence number never decreases, whatever
    its age or backlog. (`seen` must be read after `mark`, or a concurrent pass may have
    recorded a higher sequence number than the one read.)
    """
    return seen.identity != mark.stream or seen.last_seq < mark.last_seq


class Reconciler(Periodic):
    """Every `interval` seconds: detect a lost stream, re-publish unpublished tasks."""

    name = "reconciler"

    def __init__(self, store: TaskStore, queue: StreamQueue, interval: float) -> None:
        super().__init__(interval)
        self._store = store
        self._queue = queue
        self._me = uuid.uuid4().hex  # owner of the re-publishes this process starts
        self._lock = asyncio.Lock()  # one stream check at a time in this process
        self._indexed = False
        self._soon: asyncio.Task[None] | None = None
        self._listing: asyncio.Task[None] | None = None
        self._listed = False
        self.republished = 0
        self.losses = 0
        queue.on_stream_lost(self._noticed)

    async def run_once(self) -> int:
        """One pass; return how many tasks were re-published."""
        if not self._indexed:
            added = await self._store.index_active()
            self._indexed = True
            if added:
                log.info("active_index_backfilled", count=added)
        self._index_listing_soon()
        count = await self.check_stream()
        stale = await self._store.unpublished(time.time() - RECONCILE_GRACE_SECONDS, _BATCH)
        if stale:
            await self._queue.publish(stale)
            self.republished += len(stale)
            log.warning("tasks_republished", count=len(stale), ids=[t.id for t in stale[:10]])
        return count + len(stale)

    async def stop(self) -> None:
        """Stop the passes and any check the queue asked for."""
        await super().stop()
        for task in (self._soon, self._listing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._soon = self._listing = None

    async def check_stream(self) -> int:
        """Compare the stream with the one the store recorded; after a loss, re-publish every
        queued and running task (resuming a re-publish left unfinished). Returns how many."""
        async with self._lock:
            raw = await self._store.marker(STREAM_MARKER)  # before the stream: see stream_lost
            seen = await self._queue.stream_state()
            if raw is None:  # the first start ever: nothing was lost, remember this stream
                await self._store.swap_marker(
                    STREAM_MARKER, None, StreamMark(seen.identity, seen.last_seq).dump()
                )
                return 0
            try:
                mark = StreamMark.load(raw)
            except (ValueError, KeyError, TypeError):  # written by hand? assume the worst
                log.error("stream_marker_unreadable", marker=raw[:200])
                mark = StreamMark(stream="", last_seq=0)
            if stream_lost(mark, seen):
                self.losses += 1
                log.warning(
                    "stream_lost",
                    recorded=mark.stream,
                    recorded_last_seq=mark.last_seq,
                    found=seen.identity,
                    found_last_seq=seen.last_seq,
                )
                started = StreamMark(seen.identity, seen.last_seq, "", self._me, time.time())
                if not await self._store.swap_marker(STREAM_MARKER, raw, started.dump()):
                    return 0  # another process recorded it first: that one re-publishes
                return await self._republish(started)
            if mark.cursor is None:
                if seen.last_seq > mark.last_seq:  # the high-water mark only ever rises
                    moved = replace(mark, last_seq=seen.last_seq)
                    await self._store.swap_marker(STREAM_MARKER, raw, moved.dump())
                return 0
            if mark.owner != self._me and time.time() - mark.at < REPAIR_STALL_SECONDS:
                return 0  # another live process is re-publishing
            return await self._republish(mark)

    async def _republish(self, mark: StreamMark) -> int:
        """Re-publish active tasks from the marker's cursor for about one interval; the marker
        moves after each batch, so whoever continues starts where this one stopped."""
        deadline = time.monotonic() + self._interval
        count = 0
        while True:
            tasks = await self._store.active(mark.cursor or None, _BATCH)
            if tasks:
                await self._queue.publish(tasks)
            count += len(tasks)
            self.republished += len(tasks)
            done = len(tasks) < _BATCH
            moved = replace(
                mark,
                cursor=None if done else tasks[-1].id,
                owner=None if done else self._me,
                at=time.time(),
            )
            if not await self._store.swap_marker(STREAM_MARKER, mark.dump(), moved.dump()):
                return count  # taken over, or another loss was recorded meanwhile
            mark = moved
            if done:
                log.warning("active_tasks_republished", count=count, stream=mark.stream)
                return count
            if time.monotonic() >= deadline:
                return count  # the rest in the next pass, so a pass stays short

    def _index_listing_soon(self) -> None:
        """Run the store's listing backfill in the background until it once succeeds."""
        if self._listed or (self._listing is not None and not self._listing.done()):
            return
        self._listing = asyncio.get_running_loop().create_task(self._index_listing())

    async def _index_listing(self) -> None:
        try:
            listed = await self._store.index_listing()
        except Exception as exc:  # the store is away: the next pass starts it again
            log.warning("listing_index_failed", reason=str(exc))
            return
        self._listed = True
        if listed:
            log.info("listing_index_backfilled", count=listed)

    def _noticed(self) -> None:
        """The queue found its stream or consumer gone: check now rather than next pass."""
        if self._soon is not None and not self._soon.done():
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the next pass checks
            self._soon = asyncio.get_running_loop().create_task(self._check_soon())

    async def _check_soon(self) -> None:
        try:
            await self.check_stream()
        except Exception as exc:  # NATS or the store is away: the next pass tries again
            log.warning("stream_check_failed", reason=str(exc))
