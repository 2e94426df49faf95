"""Distributed mode's task store on Redis.

Layout, every key under one prefix (default "qtask"):

- `{prefix}:task:{id}`: a hash per task. Each Task field is a hash field, absent when None;
  `info` and `result` are JSON, `program` raw bytes, floats in Python's round-trip repr. A
  running task also has `worker`, the id of the worker that started it; a completed one
  `completed_by` and `completed_attempt`, the worker and attempt whose result was stored.
  `memory` is "1" when the per-shot results were asked for; `memory_data` holds them (a JSON
  list) when no object store does, set by the finish script with the result.
  `backend` is absent from hashes written before tasks named one: they read as `aer`.
- `{prefix}:idem:{key}`: the id of the task created with that idempotency key.
- `{prefix}:unpublished`: sorted set of queued task ids not yet confirmed published to the
  queue, scored by created_at; the reconciler republishes what lingers there.
- `{prefix}:counts`: hash of status -> number of tasks in it, and `pending:{owner}` -> number
  of that API key's tasks queued or running (the create script checks the cap against it).
- `{prefix}:finished`: sorted set of ended task ids scored by finished_at (for retention).
- `{prefix}:active`: sorted set of the ids of queued and running tasks, every score 0 so that it
  is read in id order (ZRANGE BYLEX) with the last id read as the cursor; the reconciler
  re-publishes them after the queue lost its stream. Kept by the same scripts that change a
  status; tasks stored before it existed are added once by `index_active()` (a SCAN).
- `{prefix}:created` and `{prefix}:created:{owner}`: sorted sets of the ids of every task and of
  one API key's tasks, scored by created_at, for the listing (newest first, ties broken by id);
  kept by the create and remove scripts; tasks stored before they existed are added once by
  `index_listing()` (a SCAN).
- `{prefix}:ended` (a pub/sub channel, not a key): the finish script publishes the id of the
  task it ended, the remove script the ids it deleted; long polls in every API process wait on
  it (adapters/redis_notices.py).
- `{prefix}:marker:{name}`: small records set by compare-and-set (`swap_marker`), shared by
  every process: `queue_stream` is the NATS stream last seen, `active_index` and
  `listing_index` say the active index and the listings were backfilled.
- `{prefix}:rate:{name}`: an API key's request token bucket, while in use (its own adapter,
  adapters/redis_rate.py, through the store's public `client`).
- `{prefix}:dead`: list of dead-letter records (JSON), newest first, capped at 10,000.

Every change of a task is one Lua script (adapters/redis_lua.py), so it is atomic: the task
hash, the counters, the ledger and the dead letters change together or not at all. Each call
returns once Redis has applied and acknowledged it. Durability across a Redis restart is the
server's: with AOF on (the test servers and compose set `appendonly yes`), Redis normally writes
a command to the append-only file before it replies, so an acknowledged write survives the
redis-server process being killed; with `appendfsync everysec` an operating-system crash or
power loss (or a disk so slow that Redis postpones the write) can still lose up to about two
seconds of writes, which `appendfsync always` prevents at a cost in throughput. Without AOF a
restart loses them all.

The client retries on connection errors and timeouts with a capped exponential backoff, so a
Redis restart of a few seconds delays calls rather than failing them; anything Redis cannot do
is raised as StoreUnavailableError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from qtask.adapters import redis_hash
from qtask.adapters import redis_lua as lua
from qtask.adapters.redis_scripts import CoalescedScripts
from qtask.domain.lifecycle import ATTEMPT_PER_START, attempts_refunded
from qtask.domain.ports import Completion, ListedTask, ListPosition, TaskPage
from qtask.domain.task import (
    Status,
    Task,
    TaskOutcome,
)
from qtask.errors import PendingCapError, StoreUnavailableError, TaskNotFoundError

if TYPE_CHECKING:
    from qtask.domain.ports import TaskStore

# Key names, each formatted with the store's prefix. They live here rather than in
# qtask.constants because they are this adapter's storage format, which nothing else reads.
TASK_KEY = "{prefix}:task:{task_id}"
IDEMPOTENCY_KEY = "{prefix}:idem:{key}"
UNPUBLISHED_KEY = "{prefix}:unpublished"
ACTIVE_KEY = "{prefix}:active"
CREATED_KEY = "{prefix}:created"
OWNER_CREATED_KEY = "{prefix}:created:{owner}"
# The pub/sub channel on which the finish and remove scripts publish the ids of tasks that ended.
ENDED_CHANNEL = "{prefix}:ended"
MARKER_KEY = "{prefix}:marker:{name}"
# The marker index_active() sets once every stored task is in the active index.
ACTIVE_INDEXED_MARKER = "active_index"
# The marker index_listing() sets once every stored task is in the listings.
LISTING_INDEXED_MARKER = "listing_index"
COUNTS_KEY = "{prefix}:counts"
DEAD_KEY = "{prefix}:dead"
FINISHED_KEY = "{prefix}:finished"
PENDING_FIELD = "pending:{owner}"
_STATUSES = frozenset(status.value for status in Status)
PING_KEY = "{prefix}:ping"
DEFAULT_PREFIX = "qtask"

# Dead letters kept: enough for an operator to see every recent give-up, bounded so a task
# that keeps failing cannot grow the list (and Redis's memory) without end.
DEAD_LETTERS_MAX = 10_000

# Connection settings. A socket that does not answer in 5 s is treated as broken; a pooled
# connection idle for 5 s is checked with PING before use, so one left dead by a server restart
# is replaced instead of failing a call. Retries back off from 50 ms to at most 1 s each; 20 of
# them ride out roughly 16 s of Redis being away (a restart takes a few seconds).
SOCKET_TIMEOUT_SECONDS = 5.0
HEALTH_CHECK_INTERVAL_SECONDS = 5
RETRY_BASE_SECONDS = 0.05
RETRY_CAP_SECONDS = 1.0
RETRIES = 20
# Connections one store opens at most. A burst of calls beyond that waits for a free connection
# (up to POOL_TIMEOUT_SECONDS, longer than the retries above can take) instead of failing.
MAX_CONNECTIONS = 64
POOL_TIMEOUT_SECONDS = 30.0

# ping() is a health check: it must answer quickly, not wait out the retries above.
PING_TIMEOUT_SECONDS = 2.0
# The ping key only proves a write went through; it expires so it never accumulates.
PING_KEY_TTL_MS = 60_000

# When unpublished() meets ids whose task is no longer queued it drops them and reads again;
# this bounds the rounds so one call's cost stays bounded however stale the ledger is.
_UNPUBLISHED_ROUNDS = 8

# A listing reads the index in chunks of this many entries at most; with a status filter it stops
# after reading LIST_SCAN_MAX entries and answers what it found with a cursor, so one request's
# cost stays bounded however many tasks the filter skips.
LIST_CHUNK_MAX = 500
LIST_SCAN_MAX = 2_000


class RedisTaskStore:
    """TaskStore on Redis; see the module docstring for the layout and guarantees."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._prefix = prefix
        self._where = _describe(url)
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_TIMEOUT_SECONDS,
            decode_responses=False,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
            retry=Retry(
                ExponentialBackoff(cap=RETRY_CAP_SECONDS, base=RETRY_BASE_SECONDS), RETRIES
            ),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._redis = redis.asyncio.Redis.from_pool(pool)
        self._create = self._redis.register_script(lua.CREATE)
        self._start = self._redis.register_script(lua.START)
        self._finish = self._redis.register_script(lua.FINISH)
        self._release = self._redis.register_script(lua.RELEASE)
        self._remove = self._redis.register_script(lua.REMOVE)
        self._backfill_active = self._redis.register_script(lua.BACKFILL_ACTIVE)
        self._backfill_listing = self._redis.register_script(lua.BACKFILL_LISTING)
        self._swap_marker = self._redis.register_script(lua.SWAP_MARKER)
        # A worker's starts and ends come in bursts (a fetch, a batch): one pipeline each.
        self._batched = CoalescedScripts(self._redis)
        self._counts_key = COUNTS_KEY.format(prefix=prefix)
        self._unpublished_key = UNPUBLISHED_KEY.format(prefix=prefix)
        self._dead_key = DEAD_KEY.format(prefix=prefix)
        self._finished_key = FINISHED_KEY.format(prefix=prefix)
        self._active_key = ACTIVE_KEY.format(prefix=prefix)
        self._created_key = CREATED_KEY.format(prefix=prefix)
        self.ended_channel = ENDED_CHANNEL.format(prefix=prefix)

    # --- TaskStore -------------------------------------------------------------------------

    async def create(self, task: Task) -> Task:
        """Store a new task (or return the one already stored with its idempotency key)."""
        return (await self.create_many([task]))[0]

    async def create_many(self, tasks: Sequence[Task], *, max_pending: int = 0) -> list[Task]:
        """Store new tasks in one atomic script, which also checks the cap (the per-owner
        counters every script keeps); same idempotency rule as create."""
        if not tasks:
            return []
        with self._unavailable("store new tasks"):
            replies = await self._insert(tasks, [""] * len(tasks), max_pending)
            holders = [reply for reply in replies if isinstance(reply, str)]
            found = await self._get_many(holders) if holders else {}
            stored: list[Task] = []
            for task, reply in zip(tasks, replies, strict=True):
                if isinstance(reply, Task):
                    stored.append(reply)
                elif (existing := found[reply]) is not None:
                    stored.append(existing)
                else:
                    # Only after the key's task was deleted by hand: a takeover of a batch is
                    # capped task by task, so a refusal here can leave the batch part-stored.
                    stored.append(await self._take_over(task, reply, max_pending))
        return stored

    async def find_keyed(self, keys: Sequence[str]) -> dict[str, Task]:
        """The tasks stored under these idempotency keys, by key (two round trips)."""
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        with self._unavailable("look up idempotency keys"):
            names = [IDEMPOTENCY_KEY.format(prefix=self._prefix, key=key) for key in unique]
            ids = await self._redis.mget(names)
            held = {
                key: redis_hash.text(i) for key, i in zip(unique, ids, strict=True) if i is not None
            }
            found = await self._get_many(list(held.values())) if held else {}
        return {key: task for key, i in held.items() if (task := found[i]) is not None}

    async def get(self, task_id: str) -> Task | None:
        """Return the task or None."""
        with self._unavailable(f"read task {task_id}"):
            raw = await self._redis.hgetall(self._task_key(task_id))
        return redis_hash.from_hash(redis_hash.bytes_hash(raw)) if raw else None

    async def cancel(self, task_id: str, message: str) -> Task | None:
        """End a queued or running task in error (fail() without a dead letter); see the port."""
        try:
            return await self.fail(task_id, message)
        except TaskNotFoundError:
            return None

    async def outcomes(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        """Status, result and error of the tasks that exist among `task_ids`, in one pipeline."""
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return {}
        with self._unavailable(f"read {len(unique)} tasks"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in unique:
                    pipe.hmget(
                        self._task_key(task_id), "status", "result", "error", "owner", "memory"
                    )
                replies: list[list[bytes | None]] = await pipe.execute()
        found = {}
        for task_id, (status, result, error, owner, memory) in zip(unique, replies, strict=True):
            if status is not None:
                found[task_id] = TaskOutcome(
                    task_id,
                    Status(status.decode()),
                    None if result is None else orjson.loads(result),
                    None if error is None else error.decode(),
                    None if owner is None else owner.decode(),
                    memory == b"1",
                )
        return found

    async def memories(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """The per-shot results complete() kept in the records, in one pipeline."""
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return {}
        with self._unavailable(f"read the per-shot results of {len(unique)} tasks"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in unique:
                    pipe.hget(self._task_key(task_id), "memory_data")
                replies: list[bytes | None] = await pipe.execute()
        return {
            task_id: orjson.loads(data)
            for task_id, data in zip(unique, replies, strict=True)
            if data is not None
        }

    async def page(
        self,
        owner: str | None,
        statuses: frozenset[Status] | None,
        after: ListPosition | None,
        limit: int,
    ) -> TaskPage:
        """A page of the listing from the owner's (or every task's) sorted set, newest first:
        ZREVRANGEBYSCORE from the cursor's created_at down, skipping the ties at or above the
        cursor's id, and the tasks' status read in one pipeline per chunk; see the port."""
        if limit <= 0:
            return TaskPage([], None)
        key = self._listing_key(owner)
        top = "+inf" if after is None else repr(after[0])
        chunk = min(max(2 * limit, 32), LIST_CHUNK_MAX)
        listed: list[ListedTask] = []
        offset = 0
        last: ListPosition | None = None
        with self._unavailable("list tasks"):
            while offset < LIST_SCAN_MAX:
                raw = await self._redis.zrevrangebyscore(
                    key, top, "-inf", start=offset, num=chunk, withscores=True
                )
                offset += len(raw)
                entries = [(float(item[1]), redis_hash.text(item[0])) for item in raw]
                if after is not None:
                    entries = [entry for entry in entries if entry < after]
                found = await self.outcomes([task_id for _, task_id in entries])
                for score, task_id in entries:
                    last = (score, task_id)
                    outcome = found.get(task_id)  # None: removed since it was read
                    if outcome is not None and (statuses is None or outcome.status in statuses):
                        listed.append(ListedTask(outcome, score))
                        if len(listed) == limit:
                            return TaskPage(listed, last)
                if len(raw) < chunk:
                    return TaskPage(listed, None)
        return TaskPage(listed, last)

    async def pending_count(self, owner: str) -> int:
        """How many of `owner`'s tasks are queued or running (a counter the scripts keep)."""
        with self._unavailable("count tasks"):
            raw = await self._redis.hget(self._counts_key, PENDING_FIELD.format(owner=owner))
        return int(raw or 0)

    async def expired(self, finished_before: float, limit: int) -> list[Task]:
        """Ended tasks that ended before `finished_before`, oldest first."""
        if limit <= 0:
            return []
        with self._unavailable("list expired tasks"):
            ids = await self._redis.zrangebyscore(
                self._finished_key, "-inf", f"({finished_before!r}", start=0, num=limit
            )
            found = await self._get_many([redis_hash.text(i) for i in ids]) if ids else {}
            gone = [task_id for task_id, task in found.items() if task is None]
            if gone:  # removed by another pass meanwhile
                await self._redis.zrem(self._finished_key, *gone)
        return [task for task in found.values() if task is not None and task.status.terminal]

    async def remove(self, tasks: Sequence[Task]) -> int:
        """Delete these tasks if they ended, with their idempotency keys, in one script."""
        if not tasks:
            return 0
        keys = [self._counts_key, self._finished_key]
        args: list[str] = [self.ended_channel]
        for task in tasks:
            keys.append(self._task_key(task.id))
            if task.idempotency_key is not None:
                keys.append(IDEMPOTENCY_KEY.format(prefix=self._prefix, key=task.idempotency_key))
            if task.owner is not None:
                keys.append(self._listing_key(task.owner))
            args += [
                task.id,
                "0" if task.idempotency_key is None else "1",
                "0" if task.owner is None else "1",
            ]
        keys += [self._created_key, self._active_key]
        with self._unavailable(f"remove {len(tasks)} tasks"):
            deleted: int = await self._remove(keys=keys, args=args)
        return deleted

    async def start(self, task_id: str, worker_id: str) -> Task | None:
        """Mark a queued or running task running and count its attempt; an ended task is
        returned as is."""
        with self._unavailable(f"start task {task_id}"):
            reply = await self._batched.call(
                self._start,
                [self._task_key(task_id), self._counts_key, self._active_key],
                [ATTEMPT_PER_START, repr(time.time()), worker_id, task_id],
            )
        return None if reply is None else redis_hash.from_hash(redis_hash.pairs(reply))

    async def mark_published(self, task_ids: Sequence[str]) -> None:
        """Take these tasks off the unpublished ledger."""
        if not task_ids:
            return
        with self._unavailable("record published tasks"):
            await self._redis.zrem(self._unpublished_key, *task_ids)

    async def unpublished(self, older_than: float, limit: int) -> list[Task]:
        """Queued tasks created before `older_than` never confirmed published, oldest first."""
        if limit <= 0:
            return []
        found: list[Task] = []
        with self._unavailable("list unpublished tasks"):
            for _ in range(_UNPUBLISHED_ROUNDS):
                wanted = limit - len(found)
                ids = await self._redis.zrangebyscore(
                    self._unpublished_key,
                    "-inf",
                    f"({older_than!r}",
                    start=len(found),
                    num=wanted,
                )
                if not ids:
                    break
                tasks = await self._get_many([redis_hash.text(i) for i in ids])
                gone = [task_id for task_id, task in tasks.items() if task is None]
                gone += [
                    task.id for task in tasks.values() if task and task.status is not Status.QUEUED
                ]
                found += [t for t in tasks.values() if t and t.status is Status.QUEUED]
                if gone:
                    # Started or ended tasks reached a worker, so they were published.
                    await self._redis.zrem(self._unpublished_key, *gone)
                if not gone or len(ids) < wanted:
                    break
        return found[:limit]

    async def active(self, after: str | None, limit: int) -> list[Task]:
        """Queued and running tasks with ids above `after`, in id order, from the active index."""
        found: list[Task] = []
        low = "-" if after is None else f"({after}"
        with self._unavailable("list active tasks"):
            while len(found) < limit:
                wanted = limit - len(found)
                ids = await self._redis.zrangebylex(self._active_key, low, "+", 0, wanted)
                if not ids:
                    break
                tasks = await self._get_many([redis_hash.text(i) for i in ids])
                found += [t for t in tasks.values() if t is not None and not t.status.terminal]
                stale = [i for i, t in tasks.items() if t is None or t.status.terminal]
                if stale:  # left by a backfill that raced with a task ending: drop them
                    await self._redis.zrem(self._active_key, *stale)
                if len(ids) < wanted:
                    break
                low = f"({redis_hash.text(ids[-1])}"
        return found

    async def index_active(self) -> int:
        """Add tasks stored by an older qtask (before the active index) to the index, once.

        SCANs every task hash, a batch per script call so each check-and-add is atomic; the
        marker set at the end makes later calls one GET. 3 to 4 s per million stored tasks
        (benchmarks/reaper.py)."""
        marker = MARKER_KEY.format(prefix=self._prefix, name=ACTIVE_INDEXED_MARKER)
        pattern = TASK_KEY.format(prefix=self._prefix, task_id="*")
        added = 0
        with self._unavailable("index active tasks"):
            if await self._redis.exists(marker):
                return 0
            cursor = 0
            while True:
                cursor, keys = await self._redis.scan(cursor, match=pattern, count=1000)
                if keys:
                    added += int(await self._backfill_active(keys=[self._active_key, *keys]))
                if cursor == 0:
                    break
            await self._redis.set(marker, repr(time.time()))
        return added

    async def index_listing(self) -> int:
        """Add tasks stored by an older qtask (before the listings) to the listings, once.

        As index_active(): a SCAN of every task hash, each batch's owners read in one pipeline
        and then added by one script (which re-checks that each task still exists, so a task
        removed meanwhile leaves no entry); the marker set at the end makes later calls one GET.
        Returns how many tasks it added. About 2.4 s per 100,000 stored tasks on the 2 shared
        cores, so the reconciler runs it in the background.
        """
        marker = MARKER_KEY.format(prefix=self._prefix, name=LISTING_INDEXED_MARKER)
        pattern = TASK_KEY.format(prefix=self._prefix, task_id="*")
        added = 0
        with self._unavailable("index the listings"):
            if await self._redis.exists(marker):
                return 0
            cursor = 0
            while True:
                cursor, found = await self._redis.scan(cursor, match=pattern, count=1000)
                if found:
                    added += await self._add_to_listings([redis_hash.text(key) for key in found])
                if cursor == 0:
                    break
            await self._redis.set(marker, repr(time.time()))
        return added

    async def marker(self, name: str) -> str | None:
        """The record stored under `name`, or None."""
        with self._unavailable(f"read marker {name}"):
            raw = await self._redis.get(MARKER_KEY.format(prefix=self._prefix, name=name))
        return None if raw is None else redis_hash.text(raw)

    async def swap_marker(self, name: str, expected: str | None, new: str) -> bool:
        """Compare-and-set of the record under `name`, in one script."""
        key = MARKER_KEY.format(prefix=self._prefix, name=name)
        with self._unavailable(f"write marker {name}"):
            stored = await self._swap_marker(
                keys=[key], args=["0" if expected is None else "1", expected or "", new]
            )
        return bool(stored)

    async def complete(
        self,
        task_id: str,
        counts: dict[str, int],
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        memory: Sequence[str] | None = None,
    ) -> Completion:
        """Store the result unless the task already ended; say whether this call stored it."""
        result = json.dumps(counts, separators=(",", ":"))
        by = (worker_id or "", "" if attempt is None else str(attempt))
        extra = ("", "") if memory is None else ("memory_data", orjson.dumps(list(memory)))
        task, changed = await self._end(
            task_id, Status.COMPLETED, "result", result, "error", dead=False, by=by, extra=extra
        )
        return Completion(task, changed)

    async def fail(self, task_id: str, message: str, *, dead_letter: bool = False) -> Task:
        """End the task in error unless it already ended; optionally file a dead letter.

        The dead letter is filed only by the call that ends the task, so a retried call (or a
        late one for a task that already ended) does not file it twice.
        """
        task, _ = await self._end(
            task_id, Status.FAILED, "error", message, "result", dead=dead_letter
        )
        return task

    async def dead_letters(self, limit: int) -> list[dict[str, object]]:
        """The newest dead-letter records."""
        if limit <= 0:
            return []
        with self._unavailable("read dead letters"):
            records = await self._redis.lrange(self._dead_key, 0, limit - 1)
        return [json.loads(record) for record in records]

    async def release(self, task_id: str, reason: str | None, *, penalize: bool) -> Task | None:
        """Put a running task back in the queue; None when it was not running."""
        with self._unavailable(f"release task {task_id}"):
            reply = await self._release(
                keys=[self._task_key(task_id), self._counts_key, self._active_key],
                args=[
                    "0" if reason is None else "1",
                    reason or "",
                    str(attempts_refunded(penalize=penalize)),
                    task_id,
                ],
            )
        return None if reply is None else redis_hash.from_hash(redis_hash.pairs(reply))

    async def ping(self, timeout: float = PING_TIMEOUT_SECONDS) -> None:
        """Check within `timeout` seconds that Redis accepts a write."""
        key = PING_KEY.format(prefix=self._prefix)
        with self._unavailable("answer a health check"):
            try:
                async with asyncio.timeout(timeout):
                    await self._redis.set(key, repr(time.time()), px=PING_KEY_TTL_MS)
            except TimeoutError as exc:
                raise StoreUnavailableError(
                    f"the task store (Redis at {self._where}) did not answer within {timeout} s"
                ) from exc

    async def close(self) -> None:
        """Close the connection pool."""
        with self._unavailable("close its connections"):
            await self._redis.aclose()

    # --- for adapters that keep their own keys in this store's Redis (the rate limiter) ----

    @property
    def client(self) -> redis.asyncio.Redis:
        """The client of this store's connection pool, so a process shares one pool."""
        return self._redis

    @property
    def prefix(self) -> str:
        """The prefix every key of this deployment starts with."""
        return self._prefix

    def unavailable(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Raise a Redis failure inside as StoreUnavailableError naming this Redis and `action`."""
        return self._unavailable(action)

    # --- extras ----------------------------------------------------------------------------

    async def active_counts(self) -> dict[str, int]:
        """How many tasks are queued and running (the counters every script keeps)."""
        with self._unavailable("count tasks"):
            queued, running = await self._redis.hmget(self._counts_key, "queued", "running")
        return {"queued": int(queued or 0), "running": int(running or 0)}

    async def counts(self) -> dict[str, int]:
        """Return the number of tasks in each status (statuses with none are left out)."""
        with self._unavailable("count tasks"):
            raw = await self._redis.hgetall(self._counts_key)
        counted = {redis_hash.text(k): int(v) for k, v in raw.items()}
        return {status: n for status, n in counted.items() if n > 0 and status in _STATUSES}

    # --- internals -------------------------------------------------------------------------

    def _task_key(self, task_id: str) -> str:
        return TASK_KEY.format(prefix=self._prefix, task_id=task_id)

    def _listing_key(self, owner: str | None) -> str:
        if owner is None:
            return self._created_key
        return OWNER_CREATED_KEY.format(prefix=self._prefix, owner=owner)

    @contextlib.contextmanager
    def _unavailable(self, action: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(
                f"the task store (Redis at {self._where}) could not {action}: {exc}"
            ) from exc

    async def _insert(
        self, tasks: Sequence[Task], stale: Sequence[str], max_pending: int
    ) -> list[Task | str]:
        """Run the create script: each task comes back as stored, or as the id already there."""
        keys = [self._counts_key, self._unpublished_key]
        args: list[str | bytes] = [str(max(max_pending, 0))]
        for task, stale_id in zip(tasks, stale, strict=True):
            fields = redis_hash.to_hash(task)
            keys.append(self._task_key(task.id))
            if task.idempotency_key is not None:
                keys.append(IDEMPOTENCY_KEY.format(prefix=self._prefix, key=task.idempotency_key))
            if task.owner is not None:
                keys.append(self._listing_key(task.owner))
            args += [
                task.id,
                "0" if task.idempotency_key is None else "1",
                task.status.value,
                repr(task.created_at),
                stale_id,
                task.owner or "",
                str(len(fields)),
                *fields,
            ]
        keys += [self._created_key, self._active_key]
        replies: list[int | bytes] = await self._create(keys=keys, args=args)
        if replies and replies[0] == -1:
            _, owner, pending = replies
            raise PendingCapError(redis_hash.text(owner), int(pending), max_pending)
        return [
            task if reply == 1 else redis_hash.text(reply)
            for task, reply in zip(tasks, replies, strict=True)
        ]

    async def _take_over(self, task: Task, holder: str, max_pending: int) -> Task:
        """Store `task` under an idempotency key whose task (`holder`) no longer exists."""
        (reply,) = await self._insert([task], [holder], max_pending)
        if isinstance(reply, Task):
            return reply
        existing = await self.get(reply)  # another create took the key over first
        if existing is None:
            raise StoreUnavailableError(
                f"the task store (Redis at {self._where}) lost task {reply} while storing"
                f" task {task.id}"
            )
        return existing

    async def _add_to_listings(self, task_keys: list[str]) -> int:
        """One batch of index_listing(): read the owners, then add the tasks in one script."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_key in task_keys:
                pipe.hget(task_key, "owner")
            owners: list[bytes | None] = await pipe.execute()
        keys = [self._created_key]
        args: list[str] = []
        for task_key, owner in zip(task_keys, owners, strict=True):
            keys.append(task_key)
            if owner is not None:
                keys.append(self._listing_key(redis_hash.text(owner)))
            args.append("0" if owner is None else "1")
        return int(await self._backfill_listing(keys=keys, args=args))

    async def _get_many(self, task_ids: list[str]) -> dict[str, Task | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self._task_key(task_id))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        return {
            task_id: redis_hash.from_hash(raw) if raw else None
            for task_id, raw in zip(task_ids, raws, strict=True)
        }

    async def _end(
        self,
        task_id: str,
        status: Status,
        field: str,
        value: str,
        clear: str,
        *,
        dead: bool,
        by: tuple[str, str] = ("", ""),
        extra: tuple[str, str | bytes] = ("", ""),
    ) -> tuple[Task, bool]:
        """Run the finish script: the task as stored, and whether this call ended it."""
        with self._unavailable(f"store the outcome of task {task_id}"):
            reply = await self._batched.call(
                self._finish,
                [
                    self._task_key(task_id),
                    self._counts_key,
                    self._dead_key,
                    self._finished_key,
                    self._unpublished_key,
                    self._active_key,
                ],
                [
                    status.value,
                    field,
                    value,
                    clear,
                    repr(time.time()),
                    "1" if dead else "0",
                    DEAD_LETTERS_MAX,
                    task_id,
                    value,
                    *by,
                    self.ended_channel,
                    *extra,
                ],
            )
        if reply is None:
            raise TaskNotFoundError(task_id)
        changed, fields = reply
        return redis_hash.from_hash(redis_hash.pairs(fields)), changed == 1


def _describe(url: str) -> str:
    """Where the server is, for messages: the URL without credentials."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path if parts.hostname else ''}"


if TYPE_CHECKING:

    def _conforms(store: RedisTaskStore) -> TaskStore:
        return store  # mypy checks that RedisTaskStore satisfies the port
