"""Lua script calls made in the same event-loop turn, sent to Redis as one pipeline.

A worker starts the tasks of one fetch concurrently and records a batch's outcomes
concurrently, so their scripts (one per task) are asked for within a turn or two of each other.
Sent one by one, each pays redis-py's whole path (a pooled connection, a socket write, a read);
py-spy put the start and finish scripts at a quarter of a distributed worker's CPU. Here the
calls of one turn go out as one non-transactional pipeline: one connection, one write, one read
of all the replies; each caller still gets its own reply or its own error. A lone call is sent
as it was before.

Nothing about atomicity changes: each script is still atomic on its own, and Redis runs a
pipeline's commands in order, as it would the same calls sent one after another. A script Redis
no longer knows (its cache is emptied by a restart) is answered NOSCRIPT in the pipeline; that
call is then made alone, which loads the script, as a lone call always did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = ["CoalescedScripts"]

_Call = tuple["AsyncScript", Sequence[str], Sequence[str | bytes | int], "asyncio.Future[Any]"]


class CoalescedScripts:
    """Sends the script calls of each event-loop turn together; see the module docstring."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._waiting: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | bytes | int]
    ) -> Any:
        """Run `script` with `keys` and `args`; its reply, or the error Redis or the connection
        gave."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((script, keys, args, future))
        if len(self._waiting) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        calls, self._waiting = self._waiting, []
        calls = [call for call in calls if not call[3].done()]  # a caller that left is not sent
        if not calls:
            return
        sending = asyncio.ensure_future(self._send(calls))
        self._sending.add(sending)  # held until done: the loop keeps only weak references
        sending.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            if len(calls) == 1:
                script, keys, args, future = calls[0]
                _settle(future, await _alone(script, keys, args))
                return
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for script, keys, args, _ in calls:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the connection failed: every call of the pipeline fails
                replies = [exc] * len(calls)
            for (script, keys, args, future), reply in zip(calls, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    reply = await _alone(script, keys, args)
                _settle(future, reply)
        finally:  # this send was cancelled (the loop is closing): so is every call it carried
            for *_, future in calls:
                if not future.done():
                    future.cancel()


async def _alone(
    script: AsyncScript, keys: Sequence[str], args: Sequence[str | bytes | int]
) -> Any:
    """The script's reply, or the exception it raised (for _settle)."""
    try:
        return await script(keys=list(keys), args=list(args))
    except Exception as exc:
        return exc


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
