"""API keys: who is calling, and whether they may call now.

Keys are configured as SHA-256 digests, never in clear, and are never logged; a request names
its key with `Authorization: Bearer <key>` or `X-API-Key: <key>`. A key is 32 random bytes
(`qtask keygen`), so one fast hash is enough: there is no password to guess offline.
Each key's requests to the /tasks routes pass a token bucket, behind the RateLimiter port:
in this process (embedded mode, adapters/local_rate.py) or in Redis, shared by every API
process (distributed mode, adapters/redis_rate.py); process assembly picks one.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping

from qtask import metrics
from qtask.config import AuthSettings
from qtask.domain.ports import RateLimiter
from qtask.errors import TooManyRequestsError, UnauthorizedError

_BEARER = "bearer "


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe text."""
    return "qtk_" + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of a key, as the configuration holds it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class Gate:
    """Turns a request's headers into the caller's key name, or refuses the request."""

    def __init__(self, settings: AuthSettings, limiter: RateLimiter | None = None) -> None:
        """`limiter` holds the buckets; it is needed when keys are on and `settings.rate_per_s`
        is above 0 (ValueError otherwise), and not used when either is off."""
        self.enabled = settings.enabled
        self._names = {key.sha256: key.name for key in settings.keys}
        self._rate = settings.rate_per_s
        self._buckets: RateLimiter | None = None
        if settings.enabled and settings.rate_per_s > 0:
            if limiter is None:
                raise ValueError("auth.rate_per_s is set: the gate needs a RateLimiter")
            self._buckets = limiter

    async def caller(self, headers: Mapping[str, str]) -> str | None:
        """The name of the calling key (None when keys are off); raise 401 or 429 otherwise."""
        if not self.enabled:
            return None
        presented = _presented(headers)
        if presented is None:
            metrics.REQUESTS_REFUSED.labels("unauthorized").inc()
            raise UnauthorizedError(
                "An API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
            )
        name = self._names.get(key_digest(presented))
        if name is None:
            metrics.REQUESTS_REFUSED.labels("unauthorized").inc()
            raise UnauthorizedError("The API key is not valid.")
        if self._buckets is not None:
            wait = await self._buckets.take(name)
            if wait > 0:
                metrics.REQUESTS_REFUSED.labels("rate").inc()
                raise TooManyRequestsError(
                    f"Too many requests: key '{name}' may make {self._rate:g} per second; "
                    f"retry in {wait:.2f} s.",
                    wait,
                )
        return name


def _presented(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization")
    if authorization is not None and authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip() or None
    return headers.get("x-api-key") or None
