"""A SQLite database with one writer thread that commits concurrent writes together.

Every write is a function run inside a transaction on the writer thread. The thread takes all
writes waiting at that moment, runs each under its own savepoint and commits them with a single
fsync (group commit), so durability costs one disk flush per burst rather than per request.
Reads run on the caller's thread with a connection of its own; WAL mode lets them proceed while
the writer commits.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from qtask.errors import StoreUnavailableError

T = TypeVar("T")

# Most writes one commit takes; bounds the latency one burst adds to the request that opened it.
_MAX_GROUP = 1024

_Op = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class SQLiteDatabase:
    """A WAL-mode SQLite file with grouped durable writes and lock-free reads."""

    def __init__(
        self,
        path: Path,
        schema: str,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Open (creating) the file and run `schema`, then `migrate` for files made by older
        versions."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._local = threading.local()
        setup = self._connect()
        try:
            setup.executescript(schema)
            if migrate is not None:
                migrate(setup)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot initialise {path}: {exc}") from exc
        finally:
            setup.close()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()
        self._closed = False

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a transaction on the writer thread; return once it is durably committed."""
        if self._closed:
            raise StoreUnavailableError("the task store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ops.put((fn, future, loop))
        return await future

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on this thread's read connection (a consistent WAL snapshot)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"reading {self.path} failed: {exc}") from exc

    def close(self) -> None:
        """Finish queued writes, then stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        self._ops.put(None)
        self._writer.join()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced before it returns, so an acknowledged write survives a
        # power cut, not only a process crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _write_loop(self) -> None:
        conn = self._connect()
        stop = False
        while not stop:
            first = self._ops.get()
            if first is None:
                break
            group = [first]
            while len(group) < _MAX_GROUP:
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._commit(conn, group)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(group) == 1:  # the transaction is the op's own: no savepoint needed
                try:
                    outcomes.append((True, group[0][0](conn)))
                except Exception as exc:  # the op's error goes back to its caller
                    conn.execute("ROLLBACK")
                    outcomes.append((False, exc))
            else:
                for fn, _, _ in group:
                    conn.execute("SAVEPOINT op")
                    try:
                        outcomes.append((True, fn(conn)))
                        conn.execute("RELEASE op")
                    except Exception as exc:  # the op's own error goes back to its caller only
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        outcomes.append((False, exc))
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreUnavailableError(f"committing to {self.path} failed: {exc}")
            outcomes = [(False, failure)] * len(group)
        # One wake-up per event loop for the whole group, not one per write.
        settled: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, future, loop), (ok, value) in zip(group, outcomes, strict=True):
            settled.setdefault(loop, []).append((future, ok, value))
        for loop, answers in settled.items():
            try:
                loop.call_soon_threadsafe(_settle_all, answers)
            except RuntimeError:  # the caller's event loop is gone; nobody waits for this
                pass


def _settle_all(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in answers:
        _settle(future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
