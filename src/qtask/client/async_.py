"""The asyncio client: `AsyncClient(url, api_key=...)`, the same calls as Client, awaited.

Its calls are the plans of _calls.py (the same as Client's), run here with httpx.AsyncClient
and asyncio.sleep.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast, overload

import httpx

from qtask.client import _core
from qtask.client._calls import Calls, Plan, Progress, Reply, Sleep, described_as
from qtask.client._core import RetryPolicy
from qtask.client.models import TaskResult

P = ParamSpec("P")
T = TypeVar("T")


def _awaited(
    plan: Callable[Concatenate[Calls, P], Plan[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    """The plan as an AsyncClient coroutine method that returns its result."""

    async def call(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(plan(self._calls, *args, **kwargs))

    return described_as(call, plan)


class AsyncClient:
    """A qtask server's API. Arguments win over QTASK_URL / QTASK_API_KEY.

    Every call retries transport errors, 502/503/504 and 429 (after Retry-After) up to
    `retry.attempts` times; submissions carry an Idempotency-Key so a retry never makes a
    second task. Use as an async context manager, or call aclose().
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        config = _core.make_config(url, api_key, timeout, retry)
        self._calls = Calls(config)
        self._http = httpx.AsyncClient(
            base_url=config.base_url, headers=config.headers, timeout=timeout, transport=transport
        )

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._calls.config.base_url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    submit = _awaited(Calls.submit)
    submit_many = _awaited(Calls.submit_many)
    get = _awaited(Calls.get)
    get_many = _awaited(Calls.get_many)
    list = _awaited(Calls.list)
    circuit = _awaited(Calls.circuit)
    cancel = _awaited(Calls.cancel)
    backends = _awaited(Calls.backends)

    # A str is also a Sequence[str]: the first overload wins for it, as intended.
    @overload
    async def wait(  # type: ignore[overload-overlap]
        self, task_ids: str, *, timeout: float | None = None, progress: Progress | None = None
    ) -> TaskResult: ...
    @overload
    async def wait(
        self, task_ids: Sequence[str], *, timeout: float | None = None,
        progress: Progress | None = None,
    ) -> builtins.list[TaskResult]: ...  # fmt: skip
    async def wait(
        self,
        task_ids: str | Sequence[str],
        *,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> TaskResult | builtins.list[TaskResult]:
        """Wait until the task(s) end; raise WaitTimeoutError after `timeout` seconds.

        A server that is down or restarting meanwhile is waited for, up to the timeout.
        `progress(done, total)` is called after every poll (the command line's progress bar).
        """
        return await self._run(self._calls.wait(task_ids, timeout=timeout, progress=progress))

    async def _run(self, plan: Plan[T]) -> T:
        """Carry a plan out: its requests with httpx, its pauses with asyncio.sleep."""
        reply: Reply = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return cast(T, done.value)
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                reply = None
                continue
            try:
                reply = await self._http.request(step.method, step.path, **step.options())
            except httpx.TransportError as exc:
                reply = exc
