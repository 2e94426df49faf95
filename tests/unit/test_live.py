"""qtask.application.live: a followed state is sent once per change, ends the stream, bounded."""

from __future__ import annotations

import pytest

from qtask.application.live import StreamIdleError, Streams, TooManyStreamsError, follow


class Script:
    """A wait function that answers the states it was given, one per call, and records the
    wait it was asked for; a fake clock advances by each wait."""

    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.asked: list[float | None] = []
        self.now = 0.0

    async def wait(self, seconds: float | None) -> str:
        self.asked.append(seconds)
        self.now += seconds or 0.0
        return self.states.pop(0)

    def clock(self) -> float:
        return self.now


async def collect(script: Script, *, idle_s: float = 100.0) -> list[str]:
    ended = {"completed", "error"}.__contains__
    events = follow(script.wait, ended, poll_s=1.0, idle_s=idle_s, clock=script.clock)
    return [state async for state in events]


async def test_follow_sends_the_state_at_once_then_each_change_and_stops_at_the_end() -> None:
    script = Script(["queued", "queued", "running", "running", "completed", "never read"])
    assert await collect(script) == ["queued", "running", "completed"]
    # The first read does not wait; each later one waits at most the poll period.
    assert script.asked == [None, 1.0, 1.0, 1.0, 1.0]
    assert script.states == ["never read"]


async def test_follow_of_a_thing_that_already_ended_sends_only_that() -> None:
    script = Script(["error"])
    assert await collect(script) == ["error"]


async def test_follow_ends_with_an_error_when_nothing_changes_for_the_idle_limit() -> None:
    script = Script(["queued"] * 10)
    seen: list[str] = []

    async def consume() -> None:
        events = follow(
            script.wait, lambda s: s == "completed", poll_s=1.0, idle_s=2.5, clock=script.clock
        )
        async for state in events:
            seen.append(state)

    with pytest.raises(StreamIdleError, match=r"No change for 2\.5 s"):
        await consume()
    assert seen == ["queued"]
    # The last wait is cut to what is left of the idle limit.
    assert script.asked == [None, 1.0, 1.0, 0.5]


def test_streams_refuse_one_over_the_cap_and_free_a_slot_when_a_stream_ends() -> None:
    streams = Streams(max_streams=2, poll_s=1.0, idle_s=10.0)
    with streams.slot(), streams.slot():
        assert streams.open == 2
        with pytest.raises(TooManyStreamsError, match="already streams 2"), streams.slot():
            pass
    assert streams.open == 0
    with streams.slot():
        assert streams.open == 1
