"""Every call of the client, once, as a sans-IO plan that Client and AsyncClient both run.

A plan is a generator: it yields the steps it needs — `Send` (an HTTP request) or `Sleep` (a
pause) — is answered after each Send with the httpx.Response, or the httpx.TransportError the
request raised, and returns the call's result (or raises its typed error). Retries with their
Idempotency-Key, long polls, the wait loop and the reading of answers are all here; sync.py
runs plans with httpx.Client and time.sleep, async_.py with httpx.AsyncClient and
asyncio.sleep, and that is all they do.

    plan = Calls(config).get(task_id)   # nothing happens yet
    step = next(plan)                   # Send("GET", "/tasks/<id>", ...)
    plan.send(response)                 # raises StopIteration(TaskResult)

A sync call stays a plain httpx request, no event loop: through an in-memory transport a get()
cost 86-93 µs before the plans and 90 µs with them (2 shared cores, best of 3 x 5,000).
"""

from __future__ import annotations

import builtins
import functools
import inspect
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from qtask.client import _core
from qtask.client._core import RETRY_STATUS, Config
from qtask.client.errors import RateLimitedError, ServerUnavailableError, WaitTimeoutError
from qtask.client.models import Backend, TaskPage, TaskResult

T = TypeVar("T")
C = TypeVar("C", bound=Callable[..., Any])
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Send:
    """Make this request and answer the plan with the response or the TransportError."""

    method: str
    path: str
    json: object = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    # This request's timeout in seconds; None: the client's.
    timeout_s: float | None = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments of httpx's request() besides method and path."""
        timeout = httpx.USE_CLIENT_DEFAULT if self.timeout_s is None else self.timeout_s
        return {"json": self.json, "params": self.params, "headers": self.headers,
                "timeout": timeout}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sleep:
    """Pause this long, then go on with the plan (answering it with None)."""

    seconds: float


Step = Send | Sleep
Reply = httpx.Response | httpx.TransportError | None
Plan = Generator[Step, Reply, T]


def described_as(call: C, plan: Callable[..., Any]) -> C:
    """`call` (a client's method running `plan`) with the plan's name, docstring and signature,
    less the plan's return type (help() would show `Plan[...]`)."""
    functools.update_wrapper(call, plan)
    delattr(call, "__wrapped__")  # else inspect.signature() follows it back to the plan
    signature = inspect.signature(plan).replace(return_annotation=inspect.Signature.empty)
    setattr(call, "__signature__", signature)  # noqa: B010 - not an attribute mypy knows
    return call


class Calls:
    """The plans of one client: its configuration and what it learnt of the server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._has_backends = False

    def submit(
        self,
        circuit: Any,
        *,
        shots: int | None = None,
        seed: int | None = None,
        backend: str | None = None,
        memory: bool = False,
    ) -> Plan[str]:
        """Submit one circuit (OpenQASM text or a Qiskit QuantumCircuit); return its task id.

        `memory=True` asks for each shot's bitstring too (TaskResult.memory); `backend` names
        one of backends() (the server's default without it).
        """
        yield from self._check_backend(backend)
        body = _core.submission(circuit, shots, seed, backend, memory)
        answer = yield from self.request(
            "POST", "/tasks", json=body, idempotent_key=True, submitting=True
        )
        return str(answer.json()["task_id"])

    def submit_many(
        self,
        circuits: Sequence[Any],
        *,
        shots: int | None = None,
        seed: int | None = None,
        backend: str | None = None,
        memory: bool = False,
    ) -> Plan[builtins.list[str]]:
        """Submit circuits with POST /tasks/batch; return their ids in order.

        All or nothing per request of up to 1000 circuits: an invalid circuit raises
        InvalidCircuitError (its `index` names it) and that request stores nothing.
        """
        yield from self._check_backend(backend)
        items = [_core.submission(c, shots, seed, backend, memory) for c in circuits]
        ids: builtins.list[str] = []
        for chunk in _core.batches(items):
            answer = yield from self.request(
                "POST", "/tasks/batch", json={"tasks": chunk}, idempotent_key=True, submitting=True
            )
            ids += [str(i) for i in answer.json()["task_ids"]]
        return ids

    def get(self, task_id: str) -> Plan[TaskResult]:
        """The task's state now."""
        answer = yield from self.request("GET", f"/tasks/{task_id}", task_id=task_id)
        return _core.result_of(task_id, answer.json())

    def get_many(
        self, task_ids: Sequence[str], *, wait: float | None = None
    ) -> Plan[builtins.list[TaskResult]]:
        """Several tasks' states, in the order asked (GET /tasks?ids=, 256 per request).

        With `wait` (seconds, at most 60), each request of 256 waits on the server until all
        of its tasks ended, or that long.
        """
        results: builtins.list[TaskResult] = []
        for chunk in _core.id_chunks(task_ids):
            params = {"ids": ",".join(chunk)}
            if wait is not None:
                params["wait"] = f"{wait:g}"
            answer = yield from self.request("GET", "/tasks", params=params, wait=wait)
            results += [_core.result_of(t["task_id"], t) for t in answer.json()["tasks"]]
        return results

    def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Plan[TaskPage]:
        """Your tasks (every task when the server has API keys off), newest first, one page.

        `status`: pending, completed or error (or several); `cursor`: the `next_cursor` of
        the page before. Pages stay in place while new tasks are submitted.
        """
        params = _core.list_params(status, limit, cursor)
        answer = yield from self.request("GET", "/tasks", params=params)
        return _core.page_of(answer.json())

    def circuit(self, task_id: str) -> Plan[str]:
        """The OpenQASM text the task was submitted with."""
        answer = yield from self.request("GET", f"/tasks/{task_id}/circuit", task_id=task_id)
        return answer.text

    def cancel(self, task_id: str) -> Plan[TaskResult]:
        """Cancel a queued or running task; ConflictError when it already ended."""
        answer = yield from self.request("DELETE", f"/tasks/{task_id}", task_id=task_id)
        return _core.result_of(task_id, answer.json())

    def backends(self) -> Plan[builtins.list[Backend]]:
        """The server's backends (GET /backends), the default first; a submission's `backend`
        names one. UnsupportedError from a server that has none (an older qtask)."""
        answer = yield from self.request("GET", "/backends", allow={404})
        return _core.backends_of(answer)

    def wait(
        self,
        task_ids: str | Sequence[str],
        *,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> Plan[TaskResult | builtins.list[TaskResult]]:
        """Until the task(s) end; WaitTimeoutError after `timeout` seconds.

        A server that is down or restarting meanwhile is waited for, up to the timeout.
        `progress(done, total)` is called after every poll (the command line's progress bar).
        """
        single = isinstance(task_ids, str)
        ids = [task_ids] if isinstance(task_ids, str) else builtins.list(task_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        schedule = _core.WaitSchedule()
        done: dict[str, TaskResult] = {}
        while True:
            pending = [i for i in ids if i not in done]
            left = None if deadline is None else deadline - time.monotonic()
            wait = _core.poll_wait(len(pending), left, progress is not None)
            asked = time.monotonic()
            try:
                for result in (yield from self._poll(pending, wait)):
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
                yield Sleep(delay)

    def _poll(self, ids: builtins.list[str], wait: float | None) -> Plan[builtins.list[TaskResult]]:
        """One (long) poll of the tasks still pending."""
        if len(ids) > 1:
            return (yield from self.get_many(ids, wait=wait))
        params = None if wait is None else {"wait": f"{wait:g}"}
        answer = yield from self.request(
            "GET", f"/tasks/{ids[0]}", params=params, task_id=ids[0], wait=wait
        )
        return [_core.result_of(ids[0], answer.json())]

    def _check_backend(self, backend: str | None) -> Plan[None]:
        # An older server ignores `backend` (the task would run on its simulator): ask once.
        if backend is not None and not self._has_backends:
            yield from self.backends()
            self._has_backends = True

    def request(
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
    ) -> Plan[httpx.Response]:
        """One request, repeated after transport errors, 502/503/504 and 429 (after its
        Retry-After) up to `retry.attempts` times; the answer, or its typed error.

        `idempotent_key`: one Idempotency-Key for every attempt; `submitting`: refusals name
        the circuit; `task_id`: a 404 is that task's NotFoundError; `allow`: codes returned
        as answers; `wait`: a long poll of that many seconds (added to the timeout).
        """
        retry = self.config.retry
        headers = {"Idempotency-Key": str(uuid.uuid4())} if idempotent_key else None
        timeout_s = None if wait is None else self.config.timeout_s + wait
        send = Send(method, path, json, params, headers, timeout_s)
        for attempt in range(1, retry.attempts + 1):
            last = attempt == retry.attempts
            answer = yield send
            if isinstance(answer, httpx.TransportError):
                if last:
                    raise ServerUnavailableError(f"{self.config.base_url}: {answer!r}") from answer
                yield Sleep(retry.delay(attempt))
                continue
            assert answer is not None, "a Send is answered with a response or a transport error"
            if answer.is_success or answer.status_code in allow:
                return answer
            error = _core.error_for(answer, task_id=task_id, submitting=submitting)
            if answer.status_code not in RETRY_STATUS or last:
                raise error
            wait_s = _core.retry_after(answer)
            if isinstance(error, RateLimitedError) and (wait_s or 0) > retry.max_retry_after_s:
                raise error
            yield Sleep(retry.delay(attempt, wait_s))
        raise AssertionError("unreachable")  # pragma: no cover
