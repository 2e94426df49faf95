"""Where a remote backend's provider calls run: a dedicated child process (ChildHost), or threads
of this process (ThreadHost, for sessions that need no Qiskit, and for unit tests' fakes).

A provider session (execution.remote_ibm's IbmSession, execution.remote_braket's BraketSession)
is a plain object with blocking methods: it transpiles or converts circuits with Qiskit and
talks to the provider's SDK. ChildHost builds it inside one child process and runs each call in
a thread there, many at once over one pipe (status calls are network waits), so the worker's
and the poller's main process never import Qiskit or a provider SDK. The child imports the
session's modules in its main thread before any call (Qiskit segfaults when first imported in
one thread and used from another, FACTS.md). A child that dies fails the calls in flight with
RemoteUnavailableError (retried by the submitter and the poller) and is started again on the
next call. Unlike ChildPool, a child here is not a simulator slot: it holds no simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from qtask.errors import QTaskError, RemoteUnavailableError
from qtask.runtime.pool import ChildFailedError, _die_with_parent, _receive, _resolve

# Seconds the child may take to import its modules and build the session (Qiskit ~0.5 s,
# the Braket SDK ~1.2 s here).
_START_TIMEOUT_S = 60.0


class ProviderHost(Protocol):
    """Runs a provider session's blocking methods without blocking the event loop."""

    async def call(self, method: str, *args: Any, timeout: float) -> Any:
        """The session's `method(*args)`; what it raised is raised here."""
        ...

    async def close(self) -> None:
        """Stop what runs the calls."""
        ...


class ThreadHost:
    """Calls in threads of this process, on a session object built here."""

    def __init__(self, session: Any) -> None:
        self.session = session

    async def call(self, method: str, *args: Any, timeout: float) -> Any:
        """getattr(session, method)(*args) in a thread, at most `timeout` seconds waited."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(getattr(self.session, method), *args)
        except TimeoutError:
            raise RemoteUnavailableError(
                f"the provider call {method} did not answer within {timeout:g} s"
            ) from None

    async def close(self) -> None:
        """Nothing to stop."""


def _portable(exc: Exception) -> Exception:
    """qtask's errors cross the pipe as they are; anything else as ChildFailedError text."""
    if isinstance(exc, QTaskError):
        return exc
    return ChildFailedError(f"{type(exc).__name__}: {exc}")


def _host_main(
    conn: Connection,
    factory_path: str,
    args: tuple[Any, ...],
    preload: Sequence[str],
    threads: int,
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import importlib

    for module in preload:  # in the main thread, before any call thread exists
        importlib.import_module(module)
    session = _resolve(factory_path)(*args)
    sending = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with sending, contextlib.suppress(OSError, ValueError):
            conn.send(message)

    def run(request_id: int, method: str, call_args: tuple[Any, ...]) -> None:
        try:
            value = getattr(session, method)(*call_args)
        except Exception as exc:  # sent back to the caller, the child stays usable
            send((request_id, False, _portable(exc)))
        else:
            send((request_id, True, value))

    send(("ready", os.getpid()))
    with ThreadPoolExecutor(threads, thread_name_prefix="provider") as executor:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            if request is None:
                return
            executor.submit(run, *request)


class ChildHost:
    """A session built by `factory_path(*args)` in one child process; see the module docstring."""

    def __init__(
        self,
        factory_path: str,
        args: Sequence[Any] = (),
        *,
        preload: Sequence[str] = (),
        threads: int = 8,
    ) -> None:
        self._factory = factory_path
        self._args = tuple(args)
        self._preload = tuple(preload)
        self._threads = threads
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._starting = asyncio.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._process is None else self._process.pid

    async def call(self, method: str, *args: Any, timeout: float) -> Any:
        """The session's `method(*args)` in the child; RemoteUnavailableError if the child
        died or did not answer within `timeout` (the call may still run to its end there)."""
        conn = await self._ensure_started()
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            conn.send((request_id, method, args))
            async with asyncio.timeout(timeout):
                return await future
        except (OSError, ValueError) as exc:
            self._pending.pop(request_id, None)  # this call raises its own error, below
            self._lost("its pipe broke")
            raise RemoteUnavailableError(f"the provider process is gone: {exc}") from exc
        except TimeoutError:
            raise RemoteUnavailableError(
                f"the provider call {method} did not answer within {timeout:g} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        """Stop the child (calls in flight fail)."""
        self._closed = True
        self._lost("closed")

    async def _ensure_started(self) -> Connection:
        if self._closed:
            raise RemoteUnavailableError("the provider process was closed")
        async with self._starting:
            if self._conn is not None and self._process is not None:
                if self._process.is_alive():
                    return self._conn
                self._lost("it exited")
            return await self._start()

    async def _start(self) -> Connection:
        # spawn, not the pools' forkserver: the child must see the environment as it is now
        # (credentials set after the forkserver started), and nothing of the pools' preloads.
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=_host_main,
            args=(child_conn, self._factory, self._args, self._preload, self._threads),
            daemon=True,
        )
        await asyncio.to_thread(process.start)
        child_conn.close()
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                ready = await asyncio.to_thread(_await_ready, parent_conn)
        except (TimeoutError, EOFError, OSError) as exc:
            with contextlib.suppress(ProcessLookupError, AttributeError, ValueError):
                process.kill()
            process.join(5)
            parent_conn.close()
            raise RemoteUnavailableError(
                f"the provider process failed to start (exit code {process.exitcode})"
            ) from exc
        if ready[0] != "ready":
            raise QTaskError(f"the provider process sent {ready!r} instead of ready")
        self._process, self._conn = process, parent_conn
        asyncio.get_running_loop().add_reader(parent_conn.fileno(), self._on_readable)
        # uvloop's add_reader leaves the pipe non-blocking, and a request larger than its buffer
        # would then go half-sent (EAGAIN); the child reads as it arrives, so writes may block.
        os.set_blocking(parent_conn.fileno(), True)
        return parent_conn

    def _on_readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            while conn.poll():
                request_id, ok, value = _receive(conn)
                future = self._pending.get(request_id)
                if future is None or future.done():
                    continue  # its caller gave up (timeout)
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (EOFError, OSError):
            self._lost("it died")

    def _lost(self, why: str) -> None:
        """Forget the child; every call in flight fails as unavailable (tried again later)."""
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        if process is not None:
            with contextlib.suppress(ProcessLookupError, AttributeError, ValueError):
                process.kill()
            process.join(5)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    RemoteUnavailableError(f"the provider process stopped ({why})")
                )


def _await_ready(conn: Connection) -> Any:
    return conn.recv()
