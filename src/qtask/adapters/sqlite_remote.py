"""RemoteJobStore on the embedded SQLite database: the `remote_jobs` table (see sqlite_tables'
SCHEMA), indexed by next poll time.

Recording a job also takes its task out of the queue's reach: the task stays `running` (clients
read `pending`, it counts against max_pending_tasks) with no lease expiry, so no claim picks it
up again and recover() leaves it alone; the poller ends it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from qtask.adapters.sqlite_db import SQLiteDatabase
from qtask.domain.remote import RemoteJob

_CLAIM = """
UPDATE remote_jobs SET next_poll_at = ?
WHERE task_id IN (
    SELECT task_id FROM remote_jobs WHERE next_poll_at <= ? ORDER BY next_poll_at LIMIT ?
)
RETURNING task_id, backend, job_id, submitted_at, next_poll_at, polls
"""


class SQLiteRemoteJobs:
    """Remote job records in the task database (RemoteJobStore)."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def record(self, job: RemoteJob) -> None:
        """Store the record and pin its running task (no lease to lapse), in one commit."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO remote_jobs"
                " (task_id, backend, job_id, submitted_at, next_poll_at, polls)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job.task_id,
                    job.backend,
                    job.job_id,
                    job.submitted_at,
                    job.next_poll_at,
                    job.polls,
                ),
            )
            conn.execute(
                "UPDATE tasks SET lease_owner = 'remote', lease_expires = NULL"
                " WHERE id = ? AND status = 'running'",
                (job.task_id,),
            )

        await self._db.write(write)

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[RemoteJob]:
        """Claim due jobs by pushing their next poll a lease ahead, in one statement."""
        rows = await self._db.write(
            lambda conn: conn.execute(_CLAIM, (now + lease_s, now, limit)).fetchall()
        )
        return [
            RemoteJob(
                task_id=row[0],
                backend=row[1],
                job_id=row[2],
                submitted_at=row[3],
                next_poll_at=row[4],
                polls=row[5],
            )
            for row in rows
        ]

    async def recover(self, now: float) -> int:
        """Make every job due now: the claims of a poller that died with this process would
        otherwise wait out their lease. Only safe while this process owns the data directory
        (as SQLiteTaskStore.recover)."""

        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE remote_jobs SET next_poll_at = ? WHERE next_poll_at > ?", (now, now)
            ).rowcount

        return await self._db.write(write)

    async def reschedule(
        self, jobs: Sequence[RemoteJob], *, claimed_until: float | None = None
    ) -> None:
        """Store each job's next poll time and poll count (only while still claimed until
        `claimed_until`, when given: the claim wrote that very float, so equality holds)."""
        query = "UPDATE remote_jobs SET next_poll_at = ?, polls = ? WHERE task_id = ?"
        params: list[tuple[object, ...]] = [
            (job.next_poll_at, job.polls, job.task_id) for job in jobs
        ]
        if claimed_until is not None:
            query += " AND next_poll_at = ?"
            params = [(*row, claimed_until) for row in params]

        def write(conn: sqlite3.Connection) -> None:  # returns no cursor out of the writer
            conn.executemany(query, params)

        await self._db.write(write)

    async def due_now(self, task_ids: Sequence[str], now: float) -> None:
        """Bring these tasks' jobs forward to `now` (a job due sooner is left as it is)."""
        params = [(now, task_id, now) for task_id in task_ids]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE remote_jobs SET next_poll_at = ? WHERE task_id = ? AND next_poll_at > ?",
                params,
            )

        await self._db.write(write)

    async def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the records of ended tasks."""
        params = [(task_id,) for task_id in task_ids]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM remote_jobs WHERE task_id = ?", params)

        await self._db.write(write)
