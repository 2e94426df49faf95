"""A pass that runs in the background every few seconds until stopped (reconciler, retention,
the remote poller).

The loop is a supervised one (qtask.runtime.supervision): a failing pass is logged with its
traceback and retried after a backoff, and `loop.check()` is the readiness check that fails
when no pass completed in three intervals. Subclasses write `run_once` only.
"""

from __future__ import annotations

from qtask.runtime.supervision import SupervisedLoop


class Periodic:
    """Calls `run_once` every `interval` seconds; a failing pass is logged and tried again."""

    name = "periodic"

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self.loop = SupervisedLoop(self.name, self._pass, interval=interval, pause=interval)

    async def run_once(self) -> object:
        """One pass; return what it did (how many things it changed, or a report)."""
        raise NotImplementedError

    def start(self) -> None:
        """Run passes in the background until stop()."""
        self.loop.start()

    async def stop(self) -> None:
        """Stop the background passes (never raises a pass's error)."""
        await self.loop.stop()

    async def _pass(self) -> None:
        await self.run_once()
