"""Supervised loops (qtask.runtime.supervision) and Periodic on them: no I/O, real event loop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import structlog.testing

from qtask.constants import EXIT_WEDGED
from qtask.runtime.periodic import Periodic
from qtask.runtime.supervision import SupervisedLoop, WedgeWatchdog, backoff_s


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class Script:
    """An iteration that does what the test says, one step per call."""

    def __init__(self, *steps: str) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        step = self.steps.pop(0) if self.steps else "tick"
        if step == "tick":  # the steady state: an iteration now and then
            await asyncio.sleep(0.01)
        if step == "raise":
            raise RuntimeError(f"boom {self.calls}")
        if step == "hang":
            await self.release.wait()


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_five() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert backoff_s(10_000) == 5.0


async def test_failing_iterations_are_logged_with_traceback_and_the_loop_goes_on() -> None:
    script = Script("raise", "raise", "ok", "hang")
    loop = SupervisedLoop("probe", script, interval=1.0)
    with structlog.testing.capture_logs() as logs:
        loop.start()
        try:
            await wait_until(lambda: loop.iterations == 1)
            assert loop.failures == 0
        finally:
            await loop.stop()
    failed = [entry for entry in logs if entry["event"] == "loop_failed"]
    assert [(e["loop"], e["failures"], e["retry_in_s"]) for e in failed] == [
        ("probe", 1, 0.1),
        ("probe", 2, 0.2),
    ]
    assert all(entry["exc_info"] is True for entry in failed)
    assert not [entry for entry in logs if entry["event"] == "loop_ended"]  # stop() is no death


async def test_no_completed_iteration_in_three_intervals_makes_the_loop_not_ready() -> None:
    script = Script("ok", "hang")
    loop = SupervisedLoop("probe", script, interval=1.0)
    loop.start()
    try:
        await wait_until(lambda: script.calls == 2)  # the first completed, the second hangs
        now = time.monotonic()
        assert loop.status(now + 2.5).startswith("ok (last iteration 2.")
        with pytest.raises(
            RuntimeError, match=r"^probe: no completed iteration for 3\.\d s \(limit 3 s\)$"
        ):
            loop.status(now + 3.5)
        script.release.set()  # unwedged: iterations complete again
        await wait_until(lambda: loop.iterations >= 2)
        assert loop.status().startswith("ok")
    finally:
        await loop.stop()


async def test_a_loop_failing_every_iteration_goes_stale_with_its_last_error() -> None:
    loop = SupervisedLoop("probe", Script(*["raise"] * 1000), interval=0.5)
    loop.start()
    try:
        await wait_until(lambda: loop.failures >= 2)
        with pytest.raises(
            RuntimeError, match=r"no completed iteration .* last error: RuntimeError: boom \d+$"
        ):
            loop.status(time.monotonic() + 2.0)
    finally:
        await loop.stop()


async def test_a_legitimate_wait_is_live_however_long_and_stale_once_it_is_not() -> None:
    legitimate = True
    entered = asyncio.Event()
    release = asyncio.Event()

    async def wait_for_a_slot() -> None:
        with loop.waiting("a free slot", lambda now: legitimate):
            entered.set()
            await release.wait()

    loop = SupervisedLoop("probe", wait_for_a_slot, interval=1.0)
    loop.start()
    try:
        await asyncio.wait_for(entered.wait(), 2.0)
        assert loop.status(time.monotonic() + 100).startswith("ok (waiting for a free slot for 10")
        legitimate = False
        with pytest.raises(
            RuntimeError, match=r"no completed iteration .*; waiting for a free slot$"
        ):
            loop.status(time.monotonic() + 100)
        legitimate = True
        release.set()  # the wait ends: the time it took is not held against the loop
        await wait_until(lambda: loop.iterations >= 1)
        assert loop.status().startswith("ok (")
    finally:
        await loop.stop()


async def test_a_long_iteration_that_reports_progress_stays_live() -> None:
    advanced = asyncio.Event()
    finish = asyncio.Event()

    async def long_pass() -> None:
        await asyncio.sleep(0)
        loop.progress()  # one chunk of a big pass done
        advanced.set()
        await finish.wait()

    loop = SupervisedLoop("probe", long_pass, interval=1.0)
    loop.start()
    try:
        await asyncio.wait_for(advanced.wait(), 2.0)
        reported = time.monotonic()
        assert loop.iterations == 0
        assert loop.status(reported + 2.5).startswith("ok (last iteration 2.")
        with pytest.raises(RuntimeError, match="no completed iteration"):
            loop.status(reported + 3.5)
    finally:
        await loop.stop()


async def test_a_loop_cancelled_from_outside_is_not_ready_and_stop_does_not_raise() -> None:
    loop = SupervisedLoop("probe", Script("hang"), interval=1.0)
    with structlog.testing.capture_logs() as logs:
        loop.start()
        await asyncio.sleep(0)
        assert loop._task is not None
        loop._task.cancel()  # as a stray cancel() elsewhere would
        await wait_until(lambda: loop.ended)
        with pytest.raises(RuntimeError, match=r"^probe ended: cancelled$"):
            loop.status()
        await loop.stop()
    [ended] = [entry for entry in logs if entry["event"] == "loop_ended"]
    assert (ended["loop"], ended["reason"]) == ("probe", "cancelled")


class Fatal(BaseException):
    """Not an Exception: the supervisor does not catch it."""


async def test_a_loop_killed_by_a_base_exception_is_not_ready_and_stop_does_not_raise() -> None:
    async def fatal() -> None:
        raise Fatal("out of options")

    loop = SupervisedLoop("probe", fatal, interval=1.0)
    loop.start()
    await wait_until(lambda: loop.ended)
    with pytest.raises(RuntimeError, match=r"^probe ended: Fatal: out of options$"):
        await loop.check()()
    await loop.stop()


async def test_a_loop_never_started_is_not_ready() -> None:
    loop = SupervisedLoop("probe", Script(), interval=1.0)
    with pytest.raises(RuntimeError, match="probe has not started"):
        loop.status()
    await loop.stop()  # harmless


class Flaky(Periodic):
    name = "flaky"

    def __init__(self, failures: int) -> None:
        super().__init__(interval=0.01)
        self.failures = failures
        self.passes = 0

    async def run_once(self) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        self.passes += 1
        return 0


async def test_periodic_pass_that_fails_is_logged_and_the_passes_go_on() -> None:
    periodic = Flaky(failures=2)
    with structlog.testing.capture_logs() as logs:
        periodic.start()
        try:
            await wait_until(lambda: periodic.passes >= 2)
            assert (await periodic.loop.check()()).startswith("ok")
        finally:
            await periodic.stop()
    failed = [entry for entry in logs if entry["event"] == "loop_failed"]
    assert [entry["loop"] for entry in failed] == ["flaky", "flaky"]
    assert periodic.loop.name == "flaky"


async def test_stop_ends_a_loop_whose_iteration_swallows_the_cancellation() -> None:
    # Some drivers turn a cancellation mid-read into their own error: the loop must still end.
    entered = asyncio.Event()

    async def swallowing() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("connection closed while reading") from None

    loop = SupervisedLoop("swallower", swallowing, interval=1.0)
    loop.start()
    await asyncio.wait_for(entered.wait(), 1)
    await asyncio.wait_for(loop.stop(), 2)
    assert loop.ended
    assert loop.failures == 0  # the error of the cancelled iteration is not a failure


class Exits:
    """Stands in for os._exit: records the status the watchdog would have ended with."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        self.codes.append(code)


async def test_the_watchdog_ends_the_process_when_a_loop_stays_stuck_in_one_iteration() -> None:
    script = Script("ok", "hang")
    loop = SupervisedLoop("probe", script, interval=0.05)  # stale after 0.15 s
    exits = Exits()
    watchdog = WedgeWatchdog(0.3, exit_process=exits, tick_s=0.02)
    loop.start()
    watchdog.start()
    try:
        with structlog.testing.capture_logs() as logs:
            await wait_until(lambda: script.calls == 2)
            hung = time.monotonic()
            await wait_until(lambda: bool(exits.codes))
        # Stale at 0.15 s, then 0.3 s more as the watchdog saw it (and a tick or two).
        assert 0.4 < time.monotonic() - hung < 3.0
        assert exits.codes == [EXIT_WEDGED]
        [line] = [entry for entry in logs if entry["event"] == "loop_wedged_exit"]
        assert line["loop"] == "probe"
        assert line["log_level"] == "critical"
    finally:
        await watchdog.stop()
        script.release.set()
        await loop.stop()


async def test_the_watchdog_spares_failing_waiting_and_progressing_loops() -> None:
    # A failing loop backs off between iterations (a restart does not fix a dependency that is
    # down), a legitimate wait is not a stall, and progress() counts as a completed iteration.
    release = asyncio.Event()

    async def wait_for_a_slot() -> None:
        with waiting_loop.waiting("a free slot", lambda now: True):
            await release.wait()

    async def long_pass() -> None:
        while not release.is_set():
            progressing.progress()
            await asyncio.sleep(0.02)

    # Limits wide enough that a loaded machine's scheduling never reaches them (0.15 + 0.2 s
    # did once, with four test processes on two cores): stale after 0.3 s, exit 0.5 s later.
    failing = SupervisedLoop("failing", Script(*["raise"] * 1000), interval=0.1)
    waiting_loop = SupervisedLoop("waiting", wait_for_a_slot, interval=0.1)
    progressing = SupervisedLoop("progressing", long_pass, interval=0.1)
    exits = Exits()
    watchdog = WedgeWatchdog(0.5, exit_process=exits, tick_s=0.02)
    loops = (failing, waiting_loop, progressing)
    for loop in loops:
        loop.start()
    watchdog.start()
    started = time.monotonic()
    try:
        # Three failures (backing off 0.1, 0.2, 0.4 s), however slow the machine, and at least
        # 2.4 s: the stale limit 0.3 s + 0.5 s, three times over.
        await wait_until(lambda: failing.failures >= 3, timeout=60)
        await asyncio.sleep(max(0.0, 2.4 - (time.monotonic() - started)))
        assert exits.codes == []
    finally:
        await watchdog.stop()
        release.set()
        for loop in loops:
            await loop.stop()


async def test_the_watchdog_ends_the_process_when_its_event_loop_stays_blocked() -> None:
    # A synchronous call that never returns runs none of the loops, nor the watchdog's own
    # ticks: its thread sees the ticks stop.
    exits = Exits()
    watchdog = WedgeWatchdog(0.3, exit_process=exits, tick_s=0.02)
    watchdog.start()
    try:
        with structlog.testing.capture_logs() as logs:
            await asyncio.sleep(0.1)
            blocked = time.monotonic()
            while not exits.codes and time.monotonic() - blocked < 3.0:
                time.sleep(0.01)  # noqa: ASYNC251 - the event loop blocked, on purpose
        assert exits.codes == [EXIT_WEDGED]
        assert time.monotonic() - blocked > 0.3
        [line] = [entry for entry in logs if entry["event"] == "event_loop_blocked_exit"]
        assert line["log_level"] == "critical"
        assert line["blocked_s"] >= 0.3
    finally:
        await watchdog.stop()


async def test_an_event_loop_blocked_for_less_than_the_limit_is_spared() -> None:
    exits = Exits()
    watchdog = WedgeWatchdog(1.0, exit_process=exits, tick_s=0.02)
    watchdog.start()
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.5)  # noqa: ASYNC251 - a slow synchronous call, well under the limit
        await asyncio.sleep(1.0)
        assert exits.codes == []
    finally:
        await watchdog.stop()


_PAUSED_PROCESS = """
import asyncio, sys, time
from qtask.runtime.supervision import SupervisedLoop, WedgeWatchdog

async def tick() -> None:
    await asyncio.sleep(0.01)

async def main() -> None:
    loop = SupervisedLoop("probe", tick, interval=0.05)  # stale after 0.15 s
    loop.start()
    WedgeWatchdog(0.3, tick_s=0.02).start()
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    print("alive", flush=True)

asyncio.run(main())
"""


def test_the_watchdog_counts_what_it_sees_so_a_paused_process_survives() -> None:
    # SIGSTOP freezes the event loop and the watchdog's thread alike. On SIGCONT every
    # iteration in flight looks stuck, and the ticks look stopped, for as long as the pause
    # (1.5 s, five times the limit); both catch up at once and the process must live on.
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_PROCESS, "3.0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        child.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        child.send_signal(signal.SIGCONT)
        out, _ = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, f"exited {child.returncode}: {out}"
    assert "alive" in out
