"""Waiting for the end of a process's life: SIGTERM or SIGINT (every role and the mesh node)."""

from __future__ import annotations

import asyncio
import contextlib
import signal


async def until_signalled() -> None:
    """Return once the process gets SIGTERM or SIGINT (handled on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
