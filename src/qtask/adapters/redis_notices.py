"""Distributed mode's end notices: one Redis pub/sub subscription per API process.

The store's finish script PUBLISHes the id of the task it ended on `{prefix}:ended`, inside the
script, so the notice is atomic with the change: no end is stored without its notice sent, and
no notice is sent for an end that was not stored. (A NATS core subject published after the
write would leave a gap: a process dying between the two stores an end nobody hears of, and its
waiters sit until their deadline.) Pub/sub is fire-and-forget, so a notice published while this
subscription is down is lost: every (re)subscription, including redis-py's own reconnects
(which subscribe again), asks the listeners to resync, and each waiter re-reads the store.

Nothing here decides anything about tasks; it only relays ids.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio

from qtask.domain.ports import EndListener
from qtask.logs import get_logger
from qtask.runtime.supervision import SupervisedLoop

log = get_logger("redis_notices")

# How long one read of the subscription waits for a message before it marks the loop live.
_READ_TIMEOUT_SECONDS = 1.0
# A silent subscription PINGs the server this often, so a dead connection is noticed.
_HEALTH_CHECK_INTERVAL_SECONDS = 5
_CONNECT_TIMEOUT_SECONDS = 5.0


class RedisEndNotices:
    """EndNotices from the channel the Redis store publishes on; see the module docstring."""

    def __init__(self, url: str, channel: str) -> None:
        self._redis = redis.asyncio.Redis.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            health_check_interval=_HEALTH_CHECK_INTERVAL_SECONDS,
        )
        self._channel = channel
        self._ended: list[EndListener] = []
        self._resync: list[Callable[[], None]] = []
        self.subscriptions = 0  # how many times the channel was (re)subscribed, for tests
        self.loop = SupervisedLoop("end_notices", self._session, interval=_READ_TIMEOUT_SECONDS * 5)

    def listen(self, ended: EndListener, resync: Callable[[], None]) -> None:
        """Call `ended(ids)` for each notice, `resync()` after each (re)subscription."""
        self._ended.append(ended)
        self._resync.append(resync)

    def start(self) -> None:
        """Subscribe in the background (and again after any failure)."""
        self.loop.start()

    async def close(self) -> None:
        """Stop listening and close the connection."""
        await self.loop.stop()
        await self._redis.aclose()

    async def _session(self) -> None:
        """One subscription, relayed until its connection fails for good (the loop retries)."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=_READ_TIMEOUT_SECONDS)
                self.loop.progress()
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # Subscribed, first or again: ends published before now may have been
                    # missed, so every waiter re-reads the store.
                    self.subscriptions += 1
                    log.info("end_notices_subscribed", channel=self._channel)
                    for resync in self._resync:
                        resync()
                elif message["type"] == "message":
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    ids = [task_id for task_id in text.split(",") if task_id]
                    for ended in self._ended:
                        ended(ids)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
