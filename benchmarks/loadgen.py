"""An async HTTP load generator that submits and polls like real qtask clients do.

`concurrency` virtual clients share one HTTP client with a pool of as many keep-alive
connections: `httpx.AsyncClient` (the default), or `RawTransport`, a minimal HTTP/1.1 client on
asyncio streams that costs a tenth of httpx's CPU per request. Each virtual client takes the
next circuit, submits it with `POST /tasks`, polls `GET /tasks/{id}` every `poll_interval`
seconds (or long-polls it with `?wait=`) until it is no longer pending, and moves on: a closed
loop with at most `concurrency` tasks outstanding. A submission answered with an error status
(or failing in transport) is retried after a short pause, as a well-behaved client would. At
the deadline every client stops and the result covers what finished by then. With `batch` > 1
a virtual client submits that many circuits in one `POST /tasks/batch` and polls them together
with `GET /tasks?ids=`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

# httpcore asks on every request whether it runs under trio through `import sniffio`; without
# sniffio installed (anyio 4 no longer needs it) each failed import rescans sys.path, ~0.5 ms
# of CPU per request on the development machine. A None entry makes that import fail at once,
# and httpcore then assumes asyncio, which is what runs here.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

SHOTS = 1024
RETRY_PAUSE_S = 0.05
MAX_IDS_PER_READ = 256  # the API's limit for GET /tasks?ids=


@dataclass(slots=True)
class LoadResult:
    """What one run of the load generator saw."""

    tasks: int
    completed: int = 0
    failed: int = 0  # the task ended with status "error"
    http_errors: int = 0  # unexpected status codes and transport errors (each retried)
    polls: int = 0
    latencies: list[float] = field(default_factory=list)  # submit → completed visible, seconds
    first_submit: float | None = None
    last_done: float | None = None
    budget_hit: bool = False
    client_cpu_s: float = 0.0
    outstanding: list[str] = field(default_factory=list)  # ids still pending at the deadline
    error_samples: list[str] = field(default_factory=list)

    @property
    def span_s(self) -> float | None:
        """First submit to last result visible."""
        if self.first_submit is None or self.last_done is None:
            return None
        return self.last_done - self.first_submit

    @property
    def throughput(self) -> float | None:
        """Finished tasks per second over `span_s`."""
        span = self.span_s
        done = self.completed + self.failed
        return done / span if span and done else None

    def percentile_ms(self, p: float) -> float | None:
        """The p-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def note_error(self, text: str) -> None:
        """Count an HTTP-level error; keep the first few for the report."""
        self.http_errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(text[:200])


class Transport(Protocol):
    """How the virtual clients talk HTTP: two calls, each giving (status, parsed JSON body)."""

    async def post_task(self, source: str) -> tuple[int, Any]: ...

    async def get_task(self, task_id: str, wait_s: float | None = None) -> tuple[int, Any]: ...

    async def post_batch(self, sources: list[str]) -> tuple[int, Any]: ...

    async def get_tasks(
        self, task_ids: list[str], wait_s: float | None = None
    ) -> tuple[int, Any]: ...

    async def aclose(self) -> None: ...


def _batch_body(sources: list[str]) -> dict[str, Any]:
    return {"tasks": [{"qc": source, "shots": SHOTS} for source in sources]}


class HttpxTransport:
    """`httpx.AsyncClient` with a pool of `connections` keep-alive connections."""

    def __init__(self, url: str, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=30)

    async def post_task(self, source: str) -> tuple[int, Any]:
        response = await self.client.post("/tasks", json={"qc": source, "shots": SHOTS})
        return response.status_code, _json_or_text(response.content)

    async def get_task(self, task_id: str, wait_s: float | None = None) -> tuple[int, Any]:
        response = await self.client.get(f"/tasks/{task_id}{_wait_query(wait_s)}")
        return response.status_code, _json_or_text(response.content)

    async def post_batch(self, sources: list[str]) -> tuple[int, Any]:
        response = await self.client.post("/tasks/batch", json=_batch_body(sources))
        return response.status_code, _json_or_text(response.content)

    async def get_tasks(self, task_ids: list[str], wait_s: float | None = None) -> tuple[int, Any]:
        params = {"ids": ",".join(task_ids)} | ({} if wait_s is None else {"wait": f"{wait_s:g}"})
        response = await self.client.get("/tasks", params=params)
        return response.status_code, _json_or_text(response.content)

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float


class RawTransport:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (JSON bodies with a length).

    It does what the load needs and nothing more, at ~0.15 ms of CPU per request on the
    2-core development machine against ~2-3 ms for httpx, so the client leaves the cores to
    the service it measures.
    """

    # uvicorn closes a connection idle for 5 s; one idle this long is replaced, not reused.
    MAX_IDLE_S = 3.0

    def __init__(self, url: str, connections: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        # Last in, first out: a few busy connections stay warm while the rest age out.
        self.idle: asyncio.LifoQueue[_Connection | None] = asyncio.LifoQueue()
        for _ in range(connections):
            self.idle.put_nowait(None)  # opened on first use
        self.open: set[asyncio.StreamWriter] = set()

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.open.add(writer)
        return _Connection(reader, writer, time.monotonic())

    def _discard(self, conn: _Connection) -> None:
        conn.writer.close()
        self.open.discard(conn.writer)

    async def _request(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        conn = await self.idle.get()
        keep = False
        try:
            if conn is not None and (
                time.monotonic() - conn.last_used > self.MAX_IDLE_S or conn.reader.at_eof()
            ):
                self._discard(conn)
                conn = None
            if conn is None:
                conn = await self._connect()
            conn.writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 30)
            status = int(head[9:12])
            lower = head.lower()
            start = lower.index(b"\r\ncontent-length:") + 17
            length = int(head[start : head.index(b"\r\n", start)])
            payload = await asyncio.wait_for(conn.reader.readexactly(length), 30)
            keep = b"\r\nconnection: close" not in lower
        finally:
            if conn is not None and keep:
                conn.last_used = time.monotonic()
                self.idle.put_nowait(conn)
            else:
                if conn is not None:
                    self._discard(conn)
                self.idle.put_nowait(None)
        return status, _json_or_text(payload)

    async def post_task(self, source: str) -> tuple[int, Any]:
        return await self._request(
            "POST", "/tasks", json.dumps({"qc": source, "shots": SHOTS}).encode()
        )

    async def get_task(self, task_id: str, wait_s: float | None = None) -> tuple[int, Any]:
        return await self._request("GET", f"/tasks/{task_id}{_wait_query(wait_s)}")

    async def post_batch(self, sources: list[str]) -> tuple[int, Any]:
        return await self._request(
            "POST", "/tasks/batch", json.dumps(_batch_body(sources)).encode()
        )

    async def get_tasks(self, task_ids: list[str], wait_s: float | None = None) -> tuple[int, Any]:
        wait = "" if wait_s is None else f"&wait={wait_s:g}"
        return await self._request("GET", "/tasks?ids=" + ",".join(task_ids) + wait)

    async def aclose(self) -> None:
        for writer in self.open:
            writer.close()


CLIENTS: dict[str, type[HttpxTransport] | type[RawTransport]] = {
    "httpx": HttpxTransport,
    "raw": RawTransport,
}
TRANSPORT_ERRORS = (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError)


def _wait_query(wait_s: float | None) -> str:
    return "" if wait_s is None else f"?wait={wait_s:g}"


def _json_or_text(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")


async def _post(
    post: Callable[[], Awaitable[tuple[int, Any]]], label: str, result: LoadResult, deadline: float
) -> tuple[Any, float] | None:
    """POST until answered 202 (pausing after each failure) or the deadline; return the body
    and when the first attempt started, which a retried submission's latency counts from."""
    started = time.perf_counter()
    if result.first_submit is None:
        result.first_submit = started
    while time.monotonic() < deadline:
        try:
            status, body = await post()
        except TRANSPORT_ERRORS as exc:
            result.note_error(f"{label} {type(exc).__name__}: {exc}")
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        if status == 202:
            return body, started
        result.note_error(f"{label} {status}: {body}")
        await asyncio.sleep(RETRY_PAUSE_S)
    return None


async def _client(
    transport: Transport,
    sources: Iterator[str],
    result: LoadResult,
    poll_interval: float,
    deadline: float,
    wait_s: float | None = None,
) -> None:
    for source in sources:
        submitted = await _post(partial(transport.post_task, source), "POST", result, deadline)
        if submitted is None:
            return
        task_id, started = str(submitted[0]["task_id"]), submitted[1]
        while True:
            if time.monotonic() >= deadline:
                result.outstanding.append(task_id)
                return
            try:
                status, body = await transport.get_task(task_id, wait_s)
            except TRANSPORT_ERRORS as exc:
                result.note_error(f"GET {type(exc).__name__}: {exc}")
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            result.polls += 1
            if status != 200:
                result.note_error(f"GET {status}: {body}")
            elif body["status"] != "pending":
                _record_done(result, body, started)
                break
            if wait_s is None:  # a long poll answered pending: its wait ran out, ask again
                await asyncio.sleep(poll_interval)


def _record_done(result: LoadResult, body: dict[str, Any], started: float) -> None:
    now = time.perf_counter()
    result.last_done = now
    if body["status"] == "completed":
        result.completed += 1
        result.latencies.append(now - started)
    else:
        result.failed += 1
        if len(result.error_samples) < 3:
            result.error_samples.append(f"task error: {str(body)[:200]}")


async def _batch_client(
    transport: Transport,
    sources: Iterator[str],
    batch: int,
    result: LoadResult,
    poll_interval: float,
    deadline: float,
    wait_s: float | None = None,
) -> None:
    """Submit `batch` circuits in one POST /tasks/batch; poll them with GET /tasks?ids=, or
    with `wait_s` long-poll them (`&wait=`: the answer comes once all of them ended)."""
    while chunk := list(itertools.islice(sources, batch)):
        submitted = await _post(lambda: transport.post_batch(chunk), "POST batch", result, deadline)
        if submitted is None:
            return
        pending, started = [str(task_id) for task_id in submitted[0]["task_ids"]], submitted[1]
        while pending:
            if time.monotonic() >= deadline:
                result.outstanding += pending
                return
            if wait_s is None:
                await asyncio.sleep(poll_interval)
            still = []
            for start in range(0, len(pending), MAX_IDS_PER_READ):
                wanted = pending[start : start + MAX_IDS_PER_READ]
                try:
                    status, body = await transport.get_tasks(wanted, wait_s)
                except TRANSPORT_ERRORS as exc:
                    result.note_error(f"GET many {type(exc).__name__}: {exc}")
                    still += wanted
                    continue
                result.polls += 1
                if status != 200:
                    result.note_error(f"GET many {status}: {body}")
                    still += wanted
                    continue
                for task in body["tasks"]:
                    if task["status"] == "pending":
                        still.append(task["task_id"])
                    else:
                        _record_done(result, task, started)
            pending = still


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(
    url: str,
    sources: list[str],
    concurrency: int,
    poll_interval: float,
    budget_s: float,
    client: str,
    batch: int,
    wait_s: float | None = None,
) -> LoadResult:
    result = LoadResult(tasks=len(sources))
    cpu_before = _cpu_seconds()
    deadline = time.monotonic() + budget_s
    shared = iter(sources)  # every virtual client takes the next circuit from one iterator
    transport = CLIENTS[client](url, concurrency)
    try:
        if batch > 1:
            clients = max(1, min(concurrency // batch, -(-len(sources) // batch)))
            workers = [
                asyncio.create_task(
                    _batch_client(transport, shared, batch, result, poll_interval, deadline, wait_s)
                )
                for _ in range(clients)
            ]
        else:
            workers = [
                asyncio.create_task(
                    _client(transport, shared, result, poll_interval, deadline, wait_s)
                )
                for _ in range(min(concurrency, len(sources)))
            ]
        # Every client returns by the deadline, except one stuck in a request (30 s timeout).
        done, pending = await asyncio.wait(workers, timeout=budget_s + 35)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                result.note_error(f"client crashed: {task.exception()!r}")
    finally:
        await transport.aclose()
    result.budget_hit = result.completed + result.failed < len(sources)
    result.client_cpu_s = _cpu_seconds() - cpu_before
    return result


def run_load(
    url: str,
    sources: list[str],
    *,
    concurrency: int = 64,
    poll_interval: float = 0.005,
    budget_s: float = 300.0,
    client: str = "httpx",
    batch: int = 1,
    wait_s: float | None = None,
) -> LoadResult:
    """Submit every source and wait for every result, or stop after `budget_s` seconds.

    With `batch` > 1, each of `concurrency // batch` virtual clients submits `batch` circuits
    in one POST /tasks/batch and polls them together with GET /tasks?ids=. With `wait_s`,
    clients long-poll instead of polling (GET /tasks/{id}?wait=wait_s, or for a batch
    GET /tasks?ids=...&wait=wait_s, answered once all of them ended).
    """
    runner_kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        import uvloop  # the client's own CPU use competes with the server on the same cores

        runner_kwargs["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**runner_kwargs) as runner:
        return runner.run(
            _run(url, sources, concurrency, poll_interval, budget_s, client, batch, wait_s)
        )


async def _drain(url: str, task_ids: list[str], budget_s: float) -> int:
    deadline = time.monotonic() + budget_s
    left = list(task_ids)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while left and time.monotonic() < deadline:
            still = []
            for task_id in left:
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"/tasks/{task_id}")
                    if response.status_code == 200 and response.json()["status"] == "pending":
                        still.append(task_id)
            left = still
            if left:
                await asyncio.sleep(0.5)
    return len(left)


def drain(url: str, task_ids: list[str], budget_s: float) -> int:
    """Wait (polling slowly) until the tasks left at a deadline end; return how many did not."""
    if not task_ids:
        return 0
    return asyncio.run(_drain(url, task_ids, budget_s))
