"""Live streams: follow one thing's state until it ends, one message per change.

The mechanism is transport-free and knows nothing of tasks: `follow()` turns a "read, or wait
up to S seconds for the end" function into an async iterator of distinct states, and `Streams`
bounds how many run at once in a process. The task websocket (`GET /tasks/{id}/events`,
qtask.api.events) is one user; the mesh's job websocket is meant to be the next.

How changes arrive: the end of a task wakes the wait at once, through the long-poll waiters
(qtask.application.waiters), which the process's EndNotices feed, so it works across API
replicas in distributed mode. Other changes (queued -> running) are not announced: each wait
that reaches its `poll_s` deadline re-reads the store, so they are seen within `poll_s` (a
bounded periodic read: about two store reads per stream per `poll_s`). No I/O here beyond the
functions given.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from qtask.errors import QTaskError

State = TypeVar("State")

# `wait(None)` reads the current state now; `wait(s)` answers once the thing ended, or after
# s seconds with its state then.
Wait = Callable[[float | None], Awaitable[State]]


class StreamIdleError(QTaskError):
    """Raised when a followed state did not change for the stream's idle limit."""


class TooManyStreamsError(QTaskError):
    """Raised when a process already serves its cap of concurrent streams."""


class Streams:
    """The bounds of live streams in one process: how many at once, how often to re-read,
    and how long one may go without a change before it is ended."""

    def __init__(self, max_streams: int, poll_s: float, idle_s: float) -> None:
        self.max_streams = max_streams
        self.poll_s = poll_s
        self.idle_s = idle_s
        self._open = 0

    @property
    def open(self) -> int:
        """How many streams run now."""
        return self._open

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the process's stream slots while the block runs; TooManyStreamsError
        when all are taken."""
        if self._open >= self.max_streams:
            raise TooManyStreamsError(
                f"This server already streams {self.max_streams} tasks; retry later."
            )
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1

    def follow(
        self,
        wait: Wait[State],
        ended: Callable[[State], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> AsyncIterator[State]:
        """follow() with this process's poll and idle limits."""
        return follow(wait, ended, poll_s=self.poll_s, idle_s=self.idle_s, clock=clock)


async def follow(
    wait: Wait[State],
    ended: Callable[[State], bool],
    *,
    poll_s: float,
    idle_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[State]:
    """Yield the current state at once, then each state that differs from the one before,
    and stop after the first that `ended` accepts (it is yielded).

    Raises StreamIdleError when `idle_s` seconds pass without a change; errors of `wait`
    (the thing is not found, the store is down) pass through.
    """
    state = await wait(None)
    yield state
    changed_at = clock()
    while not ended(state):
        left = idle_s - (clock() - changed_at)
        if left <= 0:
            raise StreamIdleError(f"No change for {idle_s:g} s; reconnect to follow on.")
        new = await wait(min(poll_s, left))
        if new != state:
            state = new
            changed_at = clock()
            yield state
