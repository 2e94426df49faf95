"""Distributed mode's rate limiter: one token bucket per API key name in Redis, shared by every
API process (RateLimiter).

Each take is one Lua script that refills the bucket by the time since it was last used (Redis's
own clock, so API processes with skewed clocks agree) and spends a token if there is one. A
bucket lives at `{prefix}:rate:{name}` in the task store's Redis, through the store's public
client, and expires once it would be full again, so Redis keeps only active keys' buckets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtask.adapters.redis_store import RedisTaskStore

if TYPE_CHECKING:
    from qtask.domain.ports import RateLimiter

RATE_KEY = "{prefix}:rate:{name}"

_TAKE_TOKEN_LUA = """
-- KEYS[1] the bucket's hash. ARGV: rate (tokens per second), burst, expiry in ms.
-- A token bucket on Redis's clock, so every API process shares it. Returns 0 when a token was
-- taken, else the seconds until one is back (as a string: Lua numbers lose their fraction).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at',
  string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.6f', wait)
"""


class RedisRateLimiter:
    """RateLimiter on Redis: one token bucket per key name, shared by every API process.

    A bucket idle long enough to be full again expires, so Redis keeps only active keys'.
    """

    def __init__(self, store: RedisTaskStore, rate: float, burst: int) -> None:
        self._store = store
        self._take = store.client.register_script(_TAKE_TOKEN_LUA)
        self._args = [repr(rate), str(burst), str(int(1000 * burst / rate) + 1000)]

    async def take(self, name: str) -> float:
        """Spend one token of `name`: 0.0 when there was one, else the seconds until one."""
        key = RATE_KEY.format(prefix=self._store.prefix, name=name)
        with self._store.unavailable("check a request rate"):
            wait = await self._take(keys=[key], args=self._args)
        return float(wait)


if TYPE_CHECKING:

    def _conforms(limiter: RedisRateLimiter) -> RateLimiter:
        return limiter  # mypy checks that RedisRateLimiter satisfies the port
