"""Supervised background loops: each keeps running through errors and reports whether it is live.

A `SupervisedLoop` calls one iteration after another. An iteration that raises an Exception is
logged with its traceback and retried after a bounded exponential backoff; the loop never ends
on its own. Its readiness check fails when no iteration completed within three of its intervals
(the loop is wedged, or fails every time), or when its task ended anyway (cancelled from outside,
or a BaseException), so /ready answers 503 and the orchestrator replaces the process.

A loop may wait for something that legitimately takes long (a free worker process while long
circuits run): inside `waiting()`, and while its `legitimate` predicate holds, that wait does not
count against the loop.

A process with no orchestrator watching /ready (docker compose only restarts containers that
exit) can run a `WedgeWatchdog`: when one of its loops stays stuck inside a single iteration,
or its event loop stays blocked, it ends the process so that the restart policy replaces it.
A loop failing every iteration is not stuck (a broken dependency is not fixed by a restart).

Nothing here knows what the loops do: the worker, the reconciler and retention build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from qtask.constants import (
    EXIT_WEDGED,
    FAULT_LOOP_FILE_ENV,
    LOOP_BACKOFF_FIRST_SECONDS,
    LOOP_BACKOFF_MAX_SECONDS,
    LOOP_STALE_INTERVALS,
)
from qtask.logs import get_logger

log = get_logger("supervision")

Iteration = Callable[[], Awaitable[None]]

# stop() cancels the loop's task again this often until it ends.
_STOP_RETRY_SECONDS = 1.0

# The supervised loops running in this process, for the watchdog.
_RUNNING: set[SupervisedLoop] = set()


def backoff_s(failures: int) -> float:
    """Seconds to wait after the `failures`-th consecutive failed iteration."""
    exponent = min(max(failures - 1, 0), 32)  # 2**32 * 0.1 s is far past the cap already
    return float(min(LOOP_BACKOFF_MAX_SECONDS, LOOP_BACKOFF_FIRST_SECONDS * 2**exponent))


class SupervisedLoop:
    """One background loop: iterations run until stop(), errors are logged and backed off."""

    def __init__(
        self, name: str, iteration: Iteration, *, interval: float, pause: float = 0.0
    ) -> None:
        """`interval`: how often an iteration completes when all is well (three of them without
        one make the loop stale); `pause`: seconds slept after each completed iteration."""
        self.name = name
        self.interval = interval
        self._iteration = iteration
        self._pause = pause
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last = time.monotonic()
        self._waiting: tuple[str, Callable[[float], bool], float] | None = None
        self.iterations = 0
        self.failures = 0  # consecutive; 0 after a completed iteration
        self.last_error: str | None = None
        # When the current iteration began (None: between iterations); it also tells the
        # watchdog one iteration from the next.
        self._began: float | None = None
        fault_file = os.environ.get(FAULT_LOOP_FILE_ENV)
        self._fault_file = Path(fault_file) if fault_file else None

    def start(self) -> None:
        """Run the loop in the background."""
        self._last = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=self.name)
        self._task.add_done_callback(self._on_end)
        _RUNNING.add(self)

    async def stop(self) -> None:
        """Cancel the loop and wait for it; never raises the loop's own error."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        # A library that swallows the cancellation (some drivers turn it into their own error
        # mid-read) must not keep the process from shutting down: the loop also checks
        # `_stopping`, and the wait is cancelled again until the task ends.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=_STOP_RETRY_SECONDS)

    @property
    def ended(self) -> bool:
        """True once the loop's task is over (stopped, or died)."""
        return self._task is not None and self._task.done()

    def progress(self) -> None:
        """Say that a long iteration is still advancing (between the chunks of a big pass), so
        that it is not taken for a wedged one; it counts like a completed iteration."""
        self._last = time.monotonic()

    @contextlib.contextmanager
    def waiting(self, what: str, legitimate: Callable[[float], bool]) -> Iterator[None]:
        """Mark a wait that is not a stall while `legitimate(now)` holds."""
        self._waiting = (what, legitimate, time.monotonic())
        try:
            yield
        finally:
            self._waiting = None
            self._last = time.monotonic()  # time spent in a legitimate wait is not a stall

    def status(self, now: float | None = None) -> str:
        """A line for /ready while the loop is live; raise RuntimeError saying why if it is not."""
        now = time.monotonic() if now is None else now
        if self._task is None:
            raise RuntimeError(f"{self.name} has not started")
        if self._task.done():
            raise RuntimeError(f"{self.name} ended: {_end_reason(self._task)}")
        if self._waiting is not None:
            what, legitimate, since = self._waiting
            if legitimate(now):
                return f"ok (waiting for {what} for {now - since:.1f} s)"
        age = now - self._last
        limit = LOOP_STALE_INTERVALS * self.interval
        if age > limit:
            doing = f"; waiting for {self._waiting[0]}" if self._waiting is not None else ""
            error = f"; last error: {self.last_error}" if self.last_error and self.failures else ""
            raise RuntimeError(
                f"{self.name}: no completed iteration for {age:.1f} s "
                f"(limit {limit:g} s){doing}{error}"
            )
        return f"ok (last iteration {age:.1f} s ago)"

    def stuck_s(self, now: float) -> float:
        """Seconds the current iteration has gone without completing or reporting progress,
        once that is past the stale limit; 0 when the loop is between iterations, backing off
        after a failure, in a legitimate wait, or not past the limit."""
        began = self._began
        if began is None or self._task is None or self._task.done():
            return 0.0
        if self._waiting is not None and self._waiting[1](now):
            return 0.0
        age = now - max(began, self._last)
        return age if age > LOOP_STALE_INTERVALS * self.interval else 0.0

    def check(self) -> Callable[[], Awaitable[str]]:
        """This loop's readiness check, for /ready."""

        async def check() -> str:
            return self.status()

        return check

    async def _run(self) -> None:
        while not self._stopping:
            self._began = time.monotonic()
            try:
                if self._fault_file is not None:
                    await self._injected_fault(self._fault_file)
                await self._iteration()
            except Exception as exc:
                self._began = None
                if self._stopping:  # the cancellation of stop(), turned into another error
                    return
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = backoff_s(self.failures)
                log.exception(
                    "loop_failed", loop=self.name, failures=self.failures, retry_in_s=delay
                )
                await asyncio.sleep(delay)
                continue
            self._began = None
            self.failures = 0
            self.iterations += 1
            self._last = time.monotonic()
            # Always yield: an iteration that found nothing to await must not starve the loop.
            await asyncio.sleep(self._pause)

    def _on_end(self, task: asyncio.Task[None]) -> None:
        _RUNNING.discard(self)
        reason = _end_reason(task)  # retrieves the exception, so asyncio never reports it lost
        if not self._stopping:
            log.error("loop_ended", loop=self.name, reason=reason)

    async def _injected_fault(self, path: Path) -> None:
        """Tests only: while `path` names this loop, hang ("NAME"), fail ("NAME fail") or
        block the whole event loop ("NAME block", as a synchronous call that never returns)."""
        while True:
            words = _fault_words(path)
            if not words or words[0] != self.name:
                return
            if words[1:2] == ["fail"]:
                raise RuntimeError(f"fault injected into {self.name} by {path}")
            if words[1:2] == ["block"]:
                time.sleep(0.05)  # noqa: ASYNC251 - the event loop blocked, on purpose
                continue
            await asyncio.sleep(0.05)


class WedgeWatchdog:
    """Ends the process when a supervised loop of it stays stuck in one iteration for
    `exit_after_s` more seconds than its stale limit, as seen by this watchdog.

    The time counts from the watchdog's first sight of the stuck iteration, not from the
    iteration's start, so a process that was paused (SIGSTOP, a suspended VM) is not ended on
    resuming: its loops complete their iterations within a tick or two. The exit skips the
    graceful shutdown, which would wait on the wedged loop itself; the tasks the process held
    are delivered again, as after a SIGKILL.

    An event loop blocked in a synchronous call (which also silences /ready: a probe's timeout)
    runs none of its loops, nor this watchdog's own ticks: a thread counts how long those ticks
    have stopped and ends the process after `exit_after_s` of it. That count, too, is the
    thread's own sight: each of its wake-ups adds at most two ticks, so the gap a pause leaves
    adds little. Only an event loop that holds the GIL inside native code stops the thread too.
    """

    def __init__(
        self,
        exit_after_s: float,
        *,
        exit_process: Callable[[int], object] = os._exit,
        tick_s: float = 1.0,
    ) -> None:
        self.exit_after_s = exit_after_s
        self._exit = exit_process
        self._tick_s = min(tick_s, max(exit_after_s / 4, 0.01))
        self._task: asyncio.Task[None] | None = None
        self._ticks = 0  # the event loop's ticks of this watchdog, read by the thread
        self._stopped = threading.Event()
        self._ending = threading.Lock()

    def start(self) -> None:
        """Watch this process's running loops, and its event loop, in the background."""
        self._task = asyncio.create_task(self._run(), name="wedge_watchdog")
        # A daemon: stop() sets _stopped and it ends within a tick, nobody waits for it.
        threading.Thread(target=self._watch_event_loop, name="wedge_watchdog", daemon=True).start()

    async def stop(self) -> None:
        """Stop watching."""
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        seen: dict[tuple[SupervisedLoop, float | None], float] = {}
        while True:
            await asyncio.sleep(self._tick_s)
            self._ticks += 1
            now = time.monotonic()
            still: dict[tuple[SupervisedLoop, float | None], float] = {}
            for loop in list(_RUNNING):
                stuck = loop.stuck_s(now)
                if not stuck:
                    continue
                key = (loop, loop._began)
                first = still[key] = seen.get(key, now)
                if now - first >= self.exit_after_s:
                    self._end("loop_wedged_exit", loop=loop.name, stuck_s=round(stuck, 1))
                    return
            seen = still

    def _watch_event_loop(self) -> None:
        """On its own thread: end the process once the event loop has not ticked for
        `exit_after_s`, counted from this thread's wake-ups (each adds two ticks at most)."""
        last_ticks, blocked_s, last = self._ticks, 0.0, time.monotonic()
        while not self._stopped.wait(self._tick_s):
            now = time.monotonic()
            if self._ticks != last_ticks:
                last_ticks, blocked_s = self._ticks, 0.0
            else:
                blocked_s += min(now - last, 2 * self._tick_s)
            last = now
            if blocked_s >= self.exit_after_s + self._tick_s:  # a tick may be late by one
                self._end("event_loop_blocked_exit", blocked_s=round(blocked_s, 1))
                return

    def _end(self, event: str, **fields: object) -> None:
        if not self._ending.acquire(blocking=False):
            return  # one exit, whichever side sees the wedge first
        self._stopped.set()
        log.critical(event, exit_code=EXIT_WEDGED, **fields)
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit(EXIT_WEDGED)


def start_watchdog(exit_after_s: float) -> WedgeWatchdog | None:
    """A started WedgeWatchdog, or None when `exit_after_s` is 0 (supervision.wedged_exit_s:
    off). On the running event loop."""
    if exit_after_s == 0:
        return None
    watchdog = WedgeWatchdog(exit_after_s)
    watchdog.start()
    return watchdog


def _end_reason(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "returned" if exc is None else f"{type(exc).__name__}: {exc}"


def _fault_words(path: Path) -> list[str]:
    # A tiny file read on the event loop, only when the test-only variable is set.
    try:
        return path.read_text().split()
    except OSError:
        return []
