"""Embedded mode's rate limiter: one token bucket per API key name, in this process
(RateLimiter). `qtask api` replicas share theirs in Redis instead (adapters/redis_rate.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qtask.domain.ports import RateLimiter


class TokenBuckets:
    """RateLimiter in this process: one token bucket per key name, `rate` tokens a second,
    at most `burst` saved up."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when)

    async def take(self, name: str) -> float:
        """Spend one token of `name`: 0.0 when there was one, else the seconds until one."""
        now = self._clock()
        tokens, then = self._buckets.get(name, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / self._rate


if TYPE_CHECKING:

    def _conforms(limiter: TokenBuckets) -> RateLimiter:
        return limiter  # mypy checks that TokenBuckets satisfies the port
