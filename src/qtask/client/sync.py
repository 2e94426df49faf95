"""The blocking client: `Client(url, api_key=...)`, used by the command line and notebooks.

Its calls are the plans of _calls.py, run here with httpx.Client and time.sleep.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence
from typing import Concatenate, ParamSpec, TypeVar, cast, overload

import httpx

from qtask.client import _core
from qtask.client._calls import Calls, Plan, Progress, Reply, Sleep, described_as
from qtask.client._core import RetryPolicy
from qtask.client.models import TaskResult

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    plan: Callable[Concatenate[Calls, P], Plan[T]],
) -> Callable[Concatenate[Client, P], T]:
    """The plan as a Client method that returns its result."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(plan(self._calls, *args, **kwargs))

    return described_as(call, plan)


class Client:
    """A qtask server's API. Arguments win over QTASK_URL / QTASK_API_KEY.

    Every call retries transport errors, 502/503/504 and 429 (after Retry-After) up to
    `retry.attempts` times; submissions carry an Idempotency-Key so a retry never makes a
    second task. Use as a context manager, or call close().
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        config = _core.make_config(url, api_key, timeout, retry)
        self._calls = Calls(config)
        self._http = httpx.Client(
            base_url=config.base_url, headers=config.headers, timeout=timeout, transport=transport
        )

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._calls.config.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    submit = _blocking(Calls.submit)
    submit_many = _blocking(Calls.submit_many)
    get = _blocking(Calls.get)
    get_many = _blocking(Calls.get_many)
    list = _blocking(Calls.list)
    circuit = _blocking(Calls.circuit)
    cancel = _blocking(Calls.cancel)
    backends = _blocking(Calls.backends)

    # A str is also a Sequence[str]: the first overload wins for it, as intended.
    @overload
    def wait(  # type: ignore[overload-overlap]
        self, task_ids: str, *, timeout: float | None = None, progress: Progress | None = None
    ) -> TaskResult: ...
    @overload
    def wait(
        self, task_ids: Sequence[str], *, timeout: float | None = None,
        progress: Progress | None = None,
    ) -> builtins.list[TaskResult]: ...  # fmt: skip
    def wait(
        self,
        task_ids: str | Sequence[str],
        *,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> TaskResult | builtins.list[TaskResult]:
        """Block until the task(s) end; raise WaitTimeoutError after `timeout` seconds.

        A server that is down or restarting meanwhile is waited for, up to the timeout.
        `progress(done, total)` is called after every poll (the command line's progress bar).
        """
        return self._run(self._calls.wait(task_ids, timeout=timeout, progress=progress))

    def _run(self, plan: Plan[T]) -> T:
        """Carry a plan out: its requests with httpx, its pauses with time.sleep."""
        reply: Reply = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return cast(T, done.value)
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                reply = None
                continue
            try:
                reply = self._http.request(step.method, step.path, **step.options())
            except httpx.TransportError as exc:
                reply = exc
