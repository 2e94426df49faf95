"""A cancel that lands in the same loop step as the wake-up it waited for is not lost.

On Python 3.11 `asyncio.wait_for` returns the awaited result and drops such a cancel, so the
cancelled fetch went on waiting (a worker's stop hung until the fetch timed out); qtask waits
with `asyncio.timeout` instead (ruff bans wait_for in src, TID251).
"""

from __future__ import annotations

import asyncio

import pytest

from qtask.testing import InMemoryTaskStore


async def test_a_fetch_cancelled_as_a_publish_wakes_it_ends_cancelled() -> None:
    queue = InMemoryTaskStore()
    fetching = asyncio.create_task(queue.fetch(1, 30.0))
    await asyncio.sleep(0)  # the fetch found nothing and waits for a wake-up

    await queue.publish([])  # sets the wake-up without yielding to the loop ...
    fetching.cancel()  # ... so the cancel lands in the same step

    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await fetching
