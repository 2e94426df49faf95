"""The asyncio client: `AsyncClient(url, api_key=...)`, the same calls as Client, awaited.

Kept line for line parallel to sync.py; what they share without I/O lives in _core.py.
"""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, overload

import httpx

from qtask.client import _core
from qtask.client._core import RETRY_STATUS, RetryPolicy
from qtask.client.errors import (
    RateLimitedError,
    ServerUnavailableError,
    WaitTimeoutError,
)
from qtask.client.models import Backend, TaskPage, TaskResult

Progress = Callable[[int, int], None]


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
        self._config = _core.make_config(url, api_key, timeout, retry)
        self._http = httpx.AsyncClient(
            base_url=self._config.base_url,
            headers=self._config.headers,
            timeout=timeout,
            transport=transport,
        )
        self._has_backends = False

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._config.base_url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def submit(
        self,
        circuit: Any,
        *,
        shots: int | None = None,
        seed: int | None = None,
        backend: str | None = None,
        memory: bool = False,
    ) -> str:
        """Submit one circuit (OpenQASM text or a Qiskit QuantumCircuit); return its task id.

        `memory=True` asks for each shot's bitstring too (TaskResult.memory).
        """
        await self._check_backend(backend)
        body = _core.submission(circuit, shots, seed, backend, memory)
        answer = await self._request(
            "POST", "/tasks", json=body, idempotent_key=True, submitting=True
        )
        return str(answer.json()["task_id"])

    async def submit_many(
        self,
        circuits: Sequence[Any],
        *,
        shots: int | None = None,
        seed: int | None = None,
        backend: str | None = None,
        memory: bool = False,
    ) -> builtins.list[str]:
        """Submit circuits with POST /tasks/batch; return their ids in order.

        All or nothing per request of up to 1000 circuits: an invalid circuit raises
        InvalidCircuitError (its `index` names it) and that request stores nothing.
        """
        await self._check_backend(backend)
        items = [_core.submission(c, shots, seed, backend, memory) for c in circuits]
        ids: builtins.list[str] = []
        for chunk in _core.batches(items):
            answer = await self._request(
                "POST", "/tasks/batch", json={"tasks": chunk}, idempotent_key=True, submitting=True
            )
            ids += [str(i) for i in answer.json()["task_ids"]]
        return ids

    async def get(self, task_id: str) -> TaskResult:
        """The task's state now."""
        answer = await self._request("GET", f"/tasks/{task_id}", task_id=task_id)
        return _core.result_of(task_id, answer.json())

    async def get_many(
        self, task_ids: Sequence[str], *, wait: float | None = None
    ) -> builtins.list[TaskResult]:
        """Several tasks' states, in the order asked (GET /tasks?ids=, 256 per request).

        With `wait` (seconds, at most 60), each request of 256 waits on the server until all
        of its tasks ended, or that long.
        """
        results: builtins.list[TaskResult] = []
        for chunk in _core.id_chunks(task_ids):
            params = {"ids": ",".join(chunk)}
            if wait is not None:
                params["wait"] = f"{wait:g}"
            answer = await self._request("GET", "/tasks", params=params, wait=wait)
            results += [_core.result_of(t["task_id"], t) for t in answer.json()["tasks"]]
        return results

    async def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """Your tasks (every task when the server has API keys off), newest first, one page;
        as Client.list."""
        params = _core.list_params(status, limit, cursor)
        return _core.page_of((await self._request("GET", "/tasks", params=params)).json())

    async def circuit(self, task_id: str) -> str:
        """The OpenQASM text the task was submitted with."""
        answer = await self._request("GET", f"/tasks/{task_id}/circuit", task_id=task_id)
        return answer.text

    # A str is also a Sequence[str]: the first overload wins for it, as intended.
    @overload
    async def wait(  # type: ignore[overload-overlap]
        self, task_ids: str, *, timeout: float | None = None, progress: Progress | None = None
    ) -> TaskResult: ...
    @overload
    async def wait(
        self,
        task_ids: Sequence[str],
        *,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> builtins.list[TaskResult]: ...
    async def wait(
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
        single = isinstance(task_ids, str)
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        schedule = _core.WaitSchedule()
        done: dict[str, TaskResult] = {}
        while True:
            pending = [i for i in ids if i not in done]
            left = None if deadline is None else deadline - time.monotonic()
            wait = _core.poll_wait(len(pending), left, progress is not None)
            asked = time.monotonic()
            try:
                for result in await self._poll(pending, wait):
                    if result.done:
                        done[result.id] = result
            except ServerUnavailableError:
                wait = None  # restarting or overloaded: keep waiting until the deadline
            if progress is not None:
                progress(len(done), len(ids))
            if len(done) == len(ids):
                results = [done[i] for i in ids]
                return results[0] if single else results
            took = time.monotonic() - asked
            delay = schedule.next_delay() if _core.answered_early(wait, took) else 0.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError([i for i in ids if i not in done], timeout or 0.0)
                delay = min(delay, left)
            if delay > 0:
                await asyncio.sleep(delay)

    async def _poll(self, ids: builtins.list[str], wait: float | None) -> builtins.list[TaskResult]:
        """One (long) poll of the tasks still pending."""
        if len(ids) > 1:
            return await self.get_many(ids, wait=wait)
        params = None if wait is None else {"wait": f"{wait:g}"}
        answer = await self._request(
            "GET", f"/tasks/{ids[0]}", params=params, task_id=ids[0], wait=wait
        )
        return [_core.result_of(ids[0], answer.json())]

    async def cancel(self, task_id: str) -> TaskResult:
        """Cancel a queued or running task; ConflictError when it already ended."""
        answer = await self._request("DELETE", f"/tasks/{task_id}", task_id=task_id)
        return _core.result_of(task_id, answer.json())

    async def backends(self) -> builtins.list[Backend]:
        """The server's backends (GET /backends), the default first; a submission's `backend`
        names one. UnsupportedError from a server that has none (an older qtask)."""
        return _core.backends_of(await self._request("GET", "/backends", allow={404}))

    async def _check_backend(self, backend: str | None) -> None:
        # An older server ignores `backend` (the task would run on its simulator): ask once.
        if backend is not None and not self._has_backends:
            await self.backends()
            self._has_backends = True

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: dict[str, str] | None = None,
        idempotent_key: bool = False,
        submitting: bool = False,
        task_id: str | None = None,
        allow: frozenset[int] | set[int] = frozenset(),
        wait: float | None = None,
    ) -> httpx.Response:
        retry = self._config.retry
        headers = {"Idempotency-Key": str(uuid.uuid4())} if idempotent_key else None
        # A long poll's answer may take `wait` seconds more than any other.
        timeout = httpx.USE_CLIENT_DEFAULT if wait is None else self._config.timeout_s + wait
        for attempt in range(1, retry.attempts + 1):
            last = attempt == retry.attempts
            try:
                answer = await self._http.request(
                    method, path, json=json, params=params, headers=headers, timeout=timeout
                )
            except httpx.TransportError as exc:
                if last:
                    raise ServerUnavailableError(f"{self.url}: {exc!r}") from exc
                await asyncio.sleep(retry.delay(attempt))
                continue
            if answer.is_success or answer.status_code in allow:
                return answer
            error = _core.error_for(answer, task_id=task_id, submitting=submitting)
            if answer.status_code not in RETRY_STATUS or last:
                raise error
            wait_s = _core.retry_after(answer)
            if isinstance(error, RateLimitedError) and (wait_s or 0) > retry.max_retry_after_s:
                raise error
            await asyncio.sleep(retry.delay(attempt, wait_s))
        raise AssertionError("unreachable")  # pragma: no cover
