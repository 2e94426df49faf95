"""A pool of supervised child processes that each handle one request at a time.

A child runs a handler given by import path. The parent sends a request over a pipe and waits
for the answer without blocking its event loop. A child that dies is noticed at once (its pipe
closes) and replaced; a child that overruns its deadline is killed and replaced. Children come
from a forkserver that imported the heavy modules once, so a replacement starts in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

from qtask.constants import OUT_OF_MEMORY_SIGNAL
from qtask.errors import QTaskError, ShuttingDownError

# Seconds a new child may take to import and initialise before it counts as failed to start.
_START_TIMEOUT = 120.0


class ChildCrashedError(QTaskError):
    """Raised when the child handling a request died before answering."""


class ChildOutOfMemoryError(ChildCrashedError):
    """Raised when the child handling a request was stopped for outgrowing its memory."""


class ChildTimeoutError(QTaskError):
    """Raised when a request overran its deadline; its child was killed."""


class ChildFailedError(QTaskError):
    """Raised when the handler raised in the child; the child itself is fine."""


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _receive(conn: Connection) -> Any:
    # An event loop's add_reader may leave the descriptor non-blocking (uvloop does). A reply
    # larger than the pipe's buffer then arrives in parts, and a non-blocking read of the rest
    # would fail; the child is writing it right now, so wait for it.
    if not conn.closed:
        os.set_blocking(conn.fileno(), True)
    return conn.recv()


def _resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _die_with_parent() -> None:
    # Linux: have the kernel SIGKILL this child when the process that started it dies, so a
    # SIGKILLed service never leaves a simulation running on.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _child_main(
    conn: Connection, handler_path: str, init_path: str | None, init_args: tuple[Any, ...]
) -> None:
    _die_with_parent()
    # The parent decides when children stop; a Ctrl-C in the terminal must not kill them midway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if init_path:
        _resolve(init_path)(*init_args)
    handler = _resolve(handler_path)
    # The imports and the initialised simulator live as long as the child: a full collection
    # need not walk them (tens of ms each with Qiskit loaded, in the middle of a task's run).
    gc.freeze()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", handler(request))
        except Exception as exc:  # reported to the parent; the child stays usable
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


class _Child:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        # The future a call waits on for this child's answer; woken when the child is killed.
        self.waiter: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError, ValueError):
            self.process.kill()
        self.process.join(5)
        # Closing the pipe silently drops the event loop's reader, so wake the waiting call
        # ourselves: it then reads the closed pipe and reports the crash.
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        self.conn.close()

    def exit_description(self) -> str:
        self.process.join(2)
        code = self.process.exitcode
        if code is None:
            return "it stopped answering"
        if code == -OUT_OF_MEMORY_SIGNAL:
            return (
                "stopped: the circuit needed more memory than the worker allows "
                "(limits.max_statevector_mb)"
            )
        if code == -signal.SIGKILL:
            # The kernel's OOM killer is the usual sender; the children volunteer as its victim.
            return (
                "killed by signal SIGKILL; out of memory, if the circuit needed more than "
                "the worker had"
            )
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


class ChildPool:
    """`size` child processes running `handler_path`; see the module docstring."""

    def __init__(
        self,
        size: int,
        handler_path: str,
        *,
        init_path: str | None = None,
        init_args: Sequence[Any] = (),
        preload: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.size = size
        self._handler = handler_path
        self._init = init_path
        self._init_args = tuple(init_args)
        self._preload = list(preload)
        self._env = env or {}
        # Last in, first out: under a trickle of requests the child that just answered takes
        # the next one, its caches and pages still warm, while the others sleep (round robin
        # cost a Bell run 1.72-1.75 ms of child CPU, this 1.45 ms: benchmarks in issue 15).
        self._idle: asyncio.Queue[_Child] = asyncio.LifoQueue()
        self._children: set[_Child] = set()
        self._closing = False
        self._ctx: ForkServerContext | None = None
        self.restarts = 0
        self._background: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Start every child and wait until each has initialised."""
        for key, value in self._env.items():
            # The forkserver and so every child inherit these (e.g. OpenMP's thread policy).
            os.environ.setdefault(key, value)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(self._preload)
        self._ctx = ctx
        children = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for child in children:
            self._idle.put_nowait(child)

    @property
    def idle(self) -> int:
        """How many children wait for work right now."""
        return self._idle.qsize()

    def alive(self) -> int:
        """How many children are running."""
        return sum(1 for child in self._children if child.process.is_alive())

    async def call(self, request: Any, timeout: float) -> Any:
        """Send `request` to an idle child and return its answer.

        Raises ChildCrashedError, ChildTimeoutError or ChildFailedError; after the first two the
        child has been replaced.
        """
        if self._closing:
            raise ShuttingDownError("the worker pool is shutting down")
        child = await self._idle.get()
        try:
            reply = await self._exchange(child, request, timeout)
        except ChildTimeoutError:
            child.kill()
            await self._replace(child)
            raise
        except ChildCrashedError as exc:
            description = child.exit_description()
            out_of_memory = child.process.exitcode == -OUT_OF_MEMORY_SIGNAL
            child.kill()
            await self._replace(child)
            error = ChildOutOfMemoryError if out_of_memory else ChildCrashedError
            raise error(f"the worker process died ({description})") from exc
        except asyncio.CancelledError:
            # The caller gave up mid-run: the child's state is unknown, so it goes.
            child.kill()
            self._children.discard(child)
            if not self._closing:
                self._background = asyncio.ensure_future(self._replace(child))
            raise
        self._idle.put_nowait(child)
        kind, value = reply
        if kind == "error":
            raise ChildFailedError(value)
        return value

    async def close(self) -> None:
        """Kill every child. Requests in flight fail with ChildCrashedError."""
        self._closing = True
        for child in list(self._children):
            child.kill()
        self._children.clear()

    async def _exchange(self, child: _Child, request: Any, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        try:
            child.conn.send(request)  # blocking: the last _receive set it so after add_reader
        except (OSError, ValueError) as exc:
            raise ChildCrashedError("send failed") from exc
        readable: asyncio.Future[None] = loop.create_future()
        fd = child.conn.fileno()
        loop.add_reader(fd, _wake, readable)
        child.waiter = readable
        try:
            async with asyncio.timeout(timeout):
                await readable
        except TimeoutError:
            raise ChildTimeoutError(f"no answer within {timeout:g} s") from None
        finally:
            child.waiter = None
            if not child.conn.closed:
                loop.remove_reader(fd)
        try:
            return _receive(child.conn)
        except (EOFError, OSError) as exc:
            raise ChildCrashedError("pipe closed") from exc

    async def _replace(self, dead: _Child) -> None:
        self._children.discard(dead)
        if self._closing:
            return
        self.restarts += 1
        child = await self._spawn()
        self._idle.put_nowait(child)

    async def _spawn(self) -> _Child:
        assert self._ctx is not None, "start() first"
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_child_main,
            args=(child_conn, self._handler, self._init, self._init_args),
            daemon=True,
        )
        await asyncio.to_thread(process.start)
        child_conn.close()
        child = _Child(process, parent_conn)
        self._children.add(child)
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = parent_conn.fileno()
        loop.add_reader(fd, _wake, ready)
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                await ready
            hello = _receive(parent_conn)
        except (TimeoutError, EOFError, OSError) as exc:
            description = child.exit_description()
            child.kill()
            self._children.discard(child)
            raise QTaskError(f"a worker process failed to start ({description})") from exc
        finally:
            loop.remove_reader(fd)
        if hello[0] != "ready":
            raise QTaskError(f"a worker process sent {hello!r} instead of ready")
        return child
