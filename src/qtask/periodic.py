"""A pass that runs in the background every few seconds until stopped (reconciler, retention)."""

from __future__ import annotations

import asyncio
import contextlib

from qtask.logs import get_logger

log = get_logger("periodic")


class Periodic:
    """Calls `run_once` every `interval` seconds; a failing pass is logged and tried again."""

    name = "periodic"

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One pass; return how many things it changed."""
        raise NotImplementedError

    def start(self) -> None:
        """Run passes in the background until stop()."""
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Stop the background passes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the store or queue is down: try again next pass
                log.warning("pass_failed", name=self.name, reason=str(exc))
            await asyncio.sleep(self._interval)
