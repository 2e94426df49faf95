"""RemoteJobStore on Redis (distributed mode): every submitted remote task's job record, and a
sorted set of them by next poll time that any number of `qtask poller` replicas claim from.

Keys (beside the task store's, same prefix):
- `{prefix}:remote:jobs`  hash: task id -> the RemoteJob as JSON;
- `{prefix}:remote:due`   sorted set: task id scored by its next poll time (epoch seconds).
A claim is one Lua script: the due members are re-scored a lease ahead in the same step, so two
pollers never claim one job, and a poller that dies mid-pass leaves its jobs to come due again.
A submitted task stays `running` in the task store; its queue message was acknowledged, so no
worker gets it again (a NATS stream lost and re-published may hand it out once more: the
worker then submits with the same idempotency key and records the same job).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import redis.asyncio
from redis.exceptions import RedisError

from qtask.domain.remote import RemoteJob
from qtask.errors import StoreUnavailableError

JOBS_KEY = "{prefix}:remote:jobs"
DUE_KEY = "{prefix}:remote:due"

# KEYS: due, jobs. ARGV: now, limit, claimed-until. Returns [id, job json, id, job json, ...].
_CLAIM_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    local job = redis.call('HGET', KEYS[2], id)
    if job then
        out[#out + 1] = id
        out[#out + 1] = job
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
return out
"""

# KEYS: due, jobs. ARGV: the claimed-until score ('' for any), then id, score, job json, ...
# Only jobs still scheduled (not forgotten by another poller meanwhile) are updated, so no record
# outlives its forget; with a claimed-until score, only those still claimed so (not made due by
# a cancel, not claimed again by another poller).
_RESCHEDULE_LUA = """
local claimed = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and (claimed == nil or tonumber(score) == claimed) then
        redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
        redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    end
end
return 0
"""


class RedisRemoteJobs:
    """Remote job records in Redis (RemoteJobStore)."""

    def __init__(self, url: str, *, prefix: str = "qtask") -> None:
        self._redis = redis.asyncio.Redis.from_url(url, decode_responses=False)
        self._jobs = JOBS_KEY.format(prefix=prefix)
        self._due = DUE_KEY.format(prefix=prefix)
        self._claim = self._redis.register_script(_CLAIM_LUA)
        self._reschedule = self._redis.register_script(_RESCHEDULE_LUA)

    async def record(self, job: RemoteJob) -> None:
        """Store the record and schedule its first poll, atomically."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._jobs, job.task_id, json.dumps(asdict(job)))
                pipe.zadd(self._due, {job.task_id: job.next_poll_at})
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailableError(f"cannot record remote job: {exc}") from exc

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[RemoteJob]:
        """Claim due jobs with one script (atomic across pollers)."""
        try:
            reply = await self._claim(
                keys=[self._due, self._jobs], args=[repr(now), str(limit), repr(now + lease_s)]
            )
        except RedisError as exc:
            raise StoreUnavailableError(f"cannot claim remote jobs: {exc}") from exc
        return [RemoteJob(**json.loads(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def reschedule(
        self, jobs: Sequence[RemoteJob], *, claimed_until: float | None = None
    ) -> None:
        """Store each job's next poll time and poll count (jobs forgotten meanwhile stay so;
        with `claimed_until`, only jobs still claimed until then)."""
        if not jobs:
            return
        args: list[str] = ["" if claimed_until is None else repr(claimed_until)]
        for job in jobs:
            args += [job.task_id, repr(job.next_poll_at), json.dumps(asdict(job))]
        try:
            await self._reschedule(keys=[self._due, self._jobs], args=args)
        except RedisError as exc:
            raise StoreUnavailableError(f"cannot reschedule remote jobs: {exc}") from exc

    async def due_now(self, task_ids: Sequence[str], now: float) -> None:
        """Bring these tasks' jobs forward to `now`: ZADD XX LT changes only scheduled jobs,
        and only to an earlier time."""
        if not task_ids:
            return
        try:
            await self._redis.zadd(self._due, dict.fromkeys(task_ids, now), xx=True, lt=True)
        except RedisError as exc:
            raise StoreUnavailableError(f"cannot make remote jobs due: {exc}") from exc

    async def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the records of ended tasks."""
        if not task_ids:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._due, *task_ids)
                pipe.hdel(self._jobs, *task_ids)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailableError(f"cannot forget remote jobs: {exc}") from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
