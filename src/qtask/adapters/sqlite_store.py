"""Embedded mode's task store and task queue, both on one SQLite database.

The queue is the table itself: a queued row is a message, claiming it is one UPDATE that leases
it to a worker and counts the attempt, and a lease that is not renewed lapses so another worker
can claim the task. Storing a result settles the message in the same commit.

A fetch that found nothing and waits is claimed for by the next insert, in the insert's own
commit: the worker then learns of the task and holds it with no second transaction (and fsync)
between submit and run (issue 15: 0.3–0.4 ms of a light-load task's ~3 ms).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from qtask.adapters import sqlite_tables as tables
from qtask.adapters.sqlite_db import SQLiteDatabase
from qtask.constants import LEASE_SECONDS
from qtask.domain.lifecycle import (
    ATTEMPT_PER_START,
    TRANSITIONS,
    attempts_refunded,
    check_transition,
)
from qtask.domain.ports import (
    Completion,
    Delivery,
    EndListener,
    ListedTask,
    ListPosition,
    TaskPage,
)
from qtask.domain.task import (
    Status,
    Task,
    TaskOutcome,
)
from qtask.errors import PendingCapError, TaskNotFoundError

_TERMINAL = (Status.COMPLETED.value, Status.FAILED.value)
# The statuses a task may end from, by the status it ends in (domain.lifecycle.TRANSITIONS),
# and _finish's UPDATE for each, written once.
_SOURCES = {
    end: tuple(sorted(start.value for start, ends in TRANSITIONS.items() if end in ends))
    for end in (Status.COMPLETED, Status.FAILED)
}
_FINISH = {
    end: "UPDATE tasks SET status = ?, result = ?, error = ?, finished_at = ?,"
    " lease_owner = NULL, lease_expires = NULL, completed_by = ?, completed_attempt = ?,"
    f" memory_data = ? WHERE id = ? AND status IN ({','.join('?' * len(sources))}) RETURNING *"
    for end, sources in _SOURCES.items()
}


class SQLiteTaskStore:
    """TaskStore and TaskQueue on one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        worker_id: str = "embedded",
        early_handover: Callable[[Task], bool] = lambda task: True,
    ) -> None:
        self._db = SQLiteDatabase(path, tables.SCHEMA, tables.migrate)
        self._worker_id = worker_id
        # Which tasks a waiting fetch may get before their insert has committed (create_many):
        # not those whose run has effects outside this database (a remote provider's job).
        self._early_handover = early_handover
        self._wakeup = asyncio.Event()
        self._listeners: list[EndListener] = []
        # How many tasks the next insert may claim for the fetch waiting now (0: none waits).
        # Read by the writer thread, so a fetch that stops waiting may still be claimed for:
        # such claims wait in _handed for the next fetch (or are refunded by close()).
        self._handoff_limit = 0
        self._handed: list[Task] = []

    @property
    def db(self) -> SQLiteDatabase:
        """The database, for adapters that keep their own tables in it (sqlite_remote)."""
        return self._db

    # --- EndNotices ------------------------------------------------------------------------

    def listen(self, ended: EndListener, resync: Callable[[], None]) -> None:
        """Call `ended(ids)` after this store ends or removes tasks. Every writer of an
        embedded database is in this process, so no notice can be missed: `resync` is never
        called."""
        self._listeners.append(ended)

    def _ended(self, task_ids: Sequence[str]) -> None:
        for listener in self._listeners:
            listener(task_ids)

    # --- TaskStore -------------------------------------------------------------------------

    async def create(self, task: Task) -> Task:
        """Store a new queued task durably (or return the one with its idempotency key)."""
        return (await self.create_many([task]))[0]

    async def create_many(self, tasks: Sequence[Task], *, max_pending: int = 0) -> list[Task]:
        """Store new queued tasks in one commit; the cap is checked in the same transaction."""
        rows = [tables.to_row(task) for task in tasks]
        loop = asyncio.get_running_loop()

        def insert(conn: sqlite3.Connection) -> tuple[list[Task], list[Task]]:
            stored = []
            inserted = False
            new: dict[str, int] = {}  # owner -> tasks this call adds
            for task, row in zip(tasks, rows, strict=True):
                if task.idempotency_key is not None:
                    existing = conn.execute(
                        "SELECT * FROM tasks WHERE idempotency_key = ?", (task.idempotency_key,)
                    ).fetchone()
                    if existing is not None:
                        stored.append(tables.from_row(existing))
                        continue
                conn.execute(tables.INSERT, row)
                inserted = True
                stored.append(task)
                if task.owner is not None and task.status is Status.QUEUED:
                    new[task.owner] = new.get(task.owner, 0) + 1
            # Counted after the inserts, inside the write transaction: the one writer thread
            # runs creates one after another, so none can pass the cap together. Raising rolls
            # this call's savepoint back: nothing is stored.
            for owner, adding in new.items() if max_pending > 0 else ():
                pending = _pending(conn, owner)
                if pending > max_pending:
                    raise PendingCapError(owner, pending - adding, max_pending)
            limit = self._handoff_limit if inserted else 0
            claimed = [
                tables.from_row(row) for row in _claim_for_waiting(conn, limit, self._worker_id)
            ]
            # This call's own new tasks go to the waiting fetch now, while the commit (an
            # fsync) is still to come: the run overlaps it. Nothing of the run can show before
            # the commit: its result is a later write on this same writer thread. Should the
            # commit fail, the task was never stored: its result finds no row and the worker
            # discards the run (the caller of create_many gets the error). Other rows the claim
            # took (requeued by an earlier write of this group) exist without this commit, so
            # they, and tasks whose run reaches outside this database, wait for it.
            mine = {task.id for task in tasks}
            early = [t for t in claimed if t.id in mine and self._early_handover(t)]
            if early:
                loop.call_soon_threadsafe(self._hand_over, early)
            handed_early = {task.id for task in early}
            late = [task for task in claimed if task.id not in handed_early]
            return stored, late

        result, late = await self._db.write(insert)
        self._handed.extend(late)
        self._wakeup.set()
        return result

    def _hand_over(self, claimed: list[Task]) -> None:
        self._handed.extend(claimed)
        self._wakeup.set()

    async def find_keyed(self, keys: Sequence[str]) -> dict[str, Task]:
        """The tasks stored under these idempotency keys, by key."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        marks = ",".join("?" * len(unique))
        query = f"SELECT * FROM tasks WHERE idempotency_key IN ({marks})"
        rows = self._db.read(lambda conn: conn.execute(query, unique).fetchall())
        return {row["idempotency_key"]: tables.from_row(row) for row in rows}

    async def get(self, task_id: str) -> Task | None:
        """Return the task or None."""
        row = self._db.read(
            lambda conn: conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        )
        return None if row is None else tables.from_row(row)

    async def cancel(self, task_id: str, message: str) -> Task | None:
        """End a queued or running task in error (fail() without a dead letter); see the port.
        Claims take only unfinished rows, so a cancelled task is never claimed."""
        try:
            return await self.fail(task_id, message)
        except TaskNotFoundError:
            return None

    async def outcomes(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        """Status, result and error of the tasks that exist among `task_ids`, by id."""
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return {}
        marks = ",".join("?" * len(unique))
        query = f"SELECT id, status, result, error, owner, memory FROM tasks WHERE id IN ({marks})"
        rows = self._db.read(lambda conn: conn.execute(query, unique).fetchall())
        return {
            row[0]: TaskOutcome(
                row[0],
                Status(row[1]),
                None if row[2] is None else orjson.loads(row[2]),
                row[3],
                row[4],
                bool(row[5]),
            )
            for row in rows
        }

    async def memories(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """The per-shot results complete() kept, for the tasks among `task_ids` that have them."""
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return {}
        marks = ",".join("?" * len(unique))
        query = (
            f"SELECT id, memory_data FROM tasks WHERE id IN ({marks}) AND memory_data IS NOT NULL"
        )
        rows = self._db.read(lambda conn: conn.execute(query, unique).fetchall())
        return {row[0]: orjson.loads(row[1]) for row in rows}

    async def page(
        self,
        owner: str | None,
        statuses: frozenset[Status] | None,
        after: ListPosition | None,
        limit: int,
    ) -> TaskPage:
        """A page of the listing, newest first, from the index tasks_created (every task) or
        tasks_owner_created (one key's); see the port."""
        query, params = page_query(owner, statuses, after, limit + 1)  # +1: is there more?
        rows = self._db.read(lambda conn: conn.execute(query, params).fetchall())
        listed = [
            ListedTask(
                TaskOutcome(
                    row[0],
                    Status(row[1]),
                    None if row[2] is None else orjson.loads(row[2]),
                    row[3],
                    row[4],
                ),
                row[5],
            )
            for row in rows[:limit]
        ]
        more = len(rows) > limit and listed
        return TaskPage(listed, (listed[-1].created_at, listed[-1].outcome.id) if more else None)

    async def pending_count(self, owner: str) -> int:
        """How many of `owner`'s tasks are queued or running (from a partial index)."""
        return self._db.read(lambda conn: _pending(conn, owner))

    async def expired(self, finished_before: float, limit: int) -> list[Task]:
        """Ended tasks that ended before `finished_before`, oldest first."""
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE status IN ('completed', 'failed')"
                " AND finished_at < ? ORDER BY finished_at LIMIT ?",
                (finished_before, limit),
            ).fetchall()
        )
        return [tables.from_row(row) for row in rows]

    async def remove(self, tasks: Sequence[Task]) -> int:
        """Delete these tasks if they ended (their idempotency keys go with the rows)."""
        ids = [task.id for task in tasks]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        query = f"DELETE FROM tasks WHERE id IN ({marks}) AND status IN ('completed', 'failed')"
        deleted: int = await self._db.write(lambda conn: conn.execute(query, ids).rowcount)
        if deleted:
            self._ended(ids)
        return deleted

    async def start(self, task_id: str, worker_id: str) -> Task | None:
        """Mark a task running and count its attempt (a claim already did; this is for other
        queues)."""

        def mark(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + ?, started_at = ?,"
                " lease_owner = ?, lease_expires = ?"
                " WHERE id = ? AND status IN ('queued', 'running') RETURNING *",
                (ATTEMPT_PER_START, time.time(), worker_id, time.time() + LEASE_SECONDS, task_id),
            ).fetchone()
            if row is None:
                row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else tables.from_row(row)

        return await self._db.write(mark)

    async def mark_published(self, task_ids: Sequence[str]) -> None:
        """Nothing to record: a stored row is already in the queue."""

    async def unpublished(self, older_than: float, limit: int) -> list[Task]:
        """Always empty: storing a task is publishing it."""
        return []

    async def active(self, after: str | None, limit: int) -> list[Task]:
        """Queued and running tasks with ids above `after`, in id order."""
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE status IN ('queued', 'running') AND id > ?"
                " ORDER BY id LIMIT ?",
                ("" if after is None else after, max(limit, 0)),
            ).fetchall()
        )
        return [tables.from_row(row) for row in rows]

    async def index_active(self) -> int:
        """Nothing to add: the partial index tasks_active_id covers every row by its status."""
        return 0

    async def index_listing(self) -> int:
        """Nothing to add: the listings read the table through indexes that cover every row."""
        return 0

    async def marker(self, name: str) -> str | None:
        """The record stored under `name`, or None."""
        query = "SELECT value FROM markers WHERE name = ?"
        row = self._db.read(lambda conn: conn.execute(query, (name,)).fetchone())
        return None if row is None else str(row[0])

    async def swap_marker(self, name: str, expected: str | None, new: str) -> bool:
        """Compare-and-set of the record under `name`, in one write transaction."""

        def swap(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM markers WHERE name = ?", (name,)).fetchone()
            if (None if row is None else row[0]) != expected:
                return False
            conn.execute("INSERT OR REPLACE INTO markers (name, value) VALUES (?, ?)", (name, new))
            return True

        return await self._db.write(swap)

    async def dead_letters(self, limit: int) -> list[dict[str, object]]:
        """The newest dead-letter records."""
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT task_id, reason, attempts, at FROM dead_letters ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [dict(row) for row in rows]

    async def complete(
        self,
        task_id: str,
        counts: dict[str, int],
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        memory: Sequence[str] | None = None,
    ) -> Completion:
        """Store the result unless the task already ended; say whether this call stored it."""
        payload = json.dumps(counts, separators=(",", ":"))
        shots = None if memory is None else orjson.dumps(list(memory)).decode()
        completion = await self._db.write(
            lambda conn: self._finish(
                conn,
                task_id,
                Status.COMPLETED,
                result=payload,
                by=(worker_id, attempt),
                memory_data=shots,
            )
        )
        if completion.transitioned:
            self._ended([task_id])
        return completion

    async def fail(self, task_id: str, message: str, *, dead_letter: bool = False) -> Task:
        """End the task in error unless it already ended; optionally file a dead letter."""

        def finish(conn: sqlite3.Connection) -> Completion:
            completion = self._finish(conn, task_id, Status.FAILED, error=message)
            if dead_letter:
                conn.execute(
                    "INSERT INTO dead_letters (task_id, reason, attempts, at) VALUES (?, ?, ?, ?)",
                    (task_id, message, completion.task.attempts, time.time()),
                )
            return completion

        completion = await self._db.write(finish)
        if completion.transitioned:
            self._ended([task_id])
        return completion.task

    async def release(self, task_id: str, reason: str | None, *, penalize: bool) -> Task | None:
        """Put a running task back in the queue; None when it was not running."""

        def requeue(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(
                "UPDATE tasks SET status = 'queued', lease_owner = NULL, lease_expires = NULL,"
                " last_error = coalesce(?, last_error), attempts = attempts - ?"
                " WHERE id = ? AND status = 'running' RETURNING *",
                (reason, attempts_refunded(penalize=penalize), task_id),
            ).fetchone()
            return None if row is None else tables.from_row(row)

        task = await self._db.write(requeue)
        self._wakeup.set()
        return task

    async def ping(self) -> None:
        """Check the database can be read and written."""
        self._db.read(lambda conn: conn.execute("SELECT 1").fetchone())
        await self._db.write(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Refund claims no fetch took, flush pending writes and close the database."""
        while self._handed:  # claimed for a fetch that stopped waiting: never ran
            handed, self._handed = self._handed, []  # (a hand-over may land meanwhile)
            for task in handed:
                await self.release(task.id, None, penalize=False)
        await asyncio.to_thread(self._db.close)

    # --- TaskQueue -------------------------------------------------------------------------

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Rows are the messages: storing a task published it. Wake a waiting fetch."""
        self._wakeup.set()

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        """Claim up to `max_tasks` queued (or lease-lapsed) tasks, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if self._handed:  # claimed for this worker in an insert's commit
                taken, self._handed = self._handed[:max_tasks], self._handed[max_tasks:]
                return [_SQLiteDelivery(self, task) for task in taken]
            self._wakeup.clear()
            now = time.time()
            params = (now, self._worker_id, now + LEASE_SECONDS, now, max_tasks)
            rows = await self._db.write(
                lambda conn, params=params: conn.execute(_CLAIM, params).fetchall()  # type: ignore[misc]
            )
            if rows:
                return [_SQLiteDelivery(self, tables.from_row(row)) for row in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._handoff_limit = max_tasks
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                if not self._handed:
                    return []
            finally:
                self._handoff_limit = 0

    async def renew(self, task_ids: Sequence[str]) -> None:
        """Extend the leases of running tasks this worker still holds."""
        until = time.time() + LEASE_SECONDS
        ids = list(task_ids)

        def touch(conn: sqlite3.Connection) -> None:
            conn.executemany(
                # A NULL lease is a submitted remote task's (sqlite_remote): the poller's now.
                "UPDATE tasks SET lease_expires = ? WHERE id = ? AND status = 'running'"
                " AND lease_expires IS NOT NULL",
                [(until, task_id) for task_id in ids],
            )

        await self._db.write(touch)

    async def recover(self) -> int:
        """Requeue every running task; only safe while this process owns the data directory.

        The attempt a crashed run used stays counted, so a circuit that kills the whole process
        tree still ends in error after its bounded number of attempts.
        """

        def requeue_all(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE tasks SET status = 'queued', lease_owner = NULL, lease_expires = NULL,"
                " last_error = coalesce(last_error, 'the service stopped while the task ran')"
                # A submitted remote task is the poller's, not a lost run.
                " WHERE status = 'running' AND id NOT IN (SELECT task_id FROM remote_jobs)"
            )
            return cursor.rowcount

        count = await self._db.write(requeue_all)
        self._wakeup.set()
        return count

    async def active_counts(self) -> dict[str, int]:
        """How many tasks are queued and running (from the index of unfinished tasks)."""
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT status, count(*) FROM tasks WHERE status IN ('queued', 'running')"
                " GROUP BY status"
            ).fetchall()
        )
        return {"queued": 0, "running": 0} | {row[0]: row[1] for row in rows}

    async def counts(self) -> dict[str, int]:
        """Return the number of tasks in each status."""
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT status, count(*) FROM tasks GROUP BY status"
            ).fetchall()
        )
        return {row[0]: row[1] for row in rows}

    def _finish(
        self,
        conn: sqlite3.Connection,
        task_id: str,
        status: Status,
        *,
        result: str | None = None,
        error: str | None = None,
        by: tuple[str | None, int | None] = (None, None),
        memory_data: str | None = None,
    ) -> Completion:
        # One statement in the common case: the UPDATE applies only from a status the state
        # machine lets become `status`, and says what it changed (on the one writer thread,
        # nothing moves the row in between). The row is read only when nothing changed.
        updated = conn.execute(
            _FINISH[status],
            (status.value, result, error, time.time(), *by, memory_data, task_id)
            + _SOURCES[status],
        ).fetchone()
        if updated is not None:
            return Completion(tables.from_row(updated), True)
        row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFoundError(task_id)
        if row["status"] in _TERMINAL:
            return Completion(tables.from_row(row), False)  # the first outcome stored wins
        check_transition(Status(row["status"]), status)  # raises: not a move that exists
        raise AssertionError(f"{status} from {row['status']} was allowed but not applied")


def page_query(
    owner: str | None,
    statuses: frozenset[Status] | None,
    after: ListPosition | None,
    limit: int,
) -> tuple[str, list[object]]:
    """The SELECT of a listing page and its parameters; walks tasks_created (or, for one
    owner, tasks_owner_created) backwards from the cursor, so a page reads about `limit` rows
    when no status filter skips many."""
    where: list[str] = []
    params: list[object] = []
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    if after is not None:
        where.append("(created_at, id) < (?, ?)")
        params += [after[0], after[1]]
    if statuses is not None:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        params += sorted(status.value for status in statuses)
    query = (
        "SELECT id, status, result, error, owner, created_at FROM tasks"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}"
        " ORDER BY created_at DESC, id DESC LIMIT ?"
    )
    params.append(max(limit, 0))
    return query, params


def _claim_for_waiting(conn: sqlite3.Connection, limit: int, worker_id: str) -> list[sqlite3.Row]:
    """Claim up to `limit` tasks inside an insert's transaction, for a fetch that waits; a
    failed claim leaves the insert alone (the fetch then claims after its wake-up)."""
    if limit <= 0:
        return []
    now = time.time()
    conn.execute("SAVEPOINT handoff")
    try:
        rows = conn.execute(_CLAIM, (now, worker_id, now + LEASE_SECONDS, now, limit)).fetchall()
    except sqlite3.Error:
        conn.execute("ROLLBACK TO handoff")
        rows = []
    conn.execute("RELEASE handoff")
    return rows


def _pending(conn: sqlite3.Connection, owner: str) -> int:
    """How many of `owner`'s tasks are queued or running (from a partial index)."""
    row = conn.execute(
        "SELECT count(*) FROM tasks WHERE owner = ? AND status IN ('queued', 'running')",
        (owner,),
    ).fetchone()
    return int(row[0])


class _SQLiteDelivery:
    """A claimed row. Storing the outcome already settled it, so ack has nothing to do."""

    def __init__(self, store: SQLiteTaskStore, task: Task) -> None:
        self._store = store
        self._task = task

    @property
    def task(self) -> Task:
        return self._task

    async def ack(self) -> None:
        return None

    async def nak(self) -> None:
        return None  # releasing the row in the store already made it claimable

    async def in_progress(self) -> None:
        await self._store.renew([self._task.id])


# A claim is a start: it counts the attempt as domain.lifecycle says (a constant, not input).
_CLAIM = f"""
UPDATE tasks SET status = 'running', attempts = attempts + {ATTEMPT_PER_START}, started_at = ?,
    lease_owner = ?, lease_expires = ?
WHERE seq IN (
    SELECT seq FROM tasks
    WHERE status IN ('queued', 'running')
      AND (status = 'queued' OR lease_expires < ?)
    ORDER BY seq LIMIT ?
)
RETURNING *
"""
