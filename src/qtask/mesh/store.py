"""The coordinator's SQLite database (FR-010): jobs, fragment attempts, reservation events,
adverts, quality reports and decisions.

Built on qtask's own SQLiteDatabase (one writer thread, group commit, fsync per commit, WAL
reads), after `migrations.migrate` has brought the file to HEAD. Stores and loads; it decides
nothing: the job rules are qtask.mesh.jobs', the registry's are qtask.mesh.registry's.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

from qtask.adapters.sqlite_db import SQLiteDatabase
from qtask.errors import PendingCapError, StoreUnavailableError
from qtask.mesh.jobs import Fragment, FragmentStatus, Job, JobState
from qtask.mesh.migrations import HEAD, migrate
from qtask.mesh.protocol import Advert, QualityReport


def open_migrated(path: Path, to: int = HEAD) -> list[str]:
    """Bring the database file at `path` to schema version `to`; the steps taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return migrate(conn, to)
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot migrate {path}: {exc}") from exc
    finally:
        conn.close()


class MeshStore:
    """Every durable record of the coordinator."""

    def __init__(self, path: Path) -> None:
        open_migrated(path)
        self.path = path
        self.db = SQLiteDatabase(path, "")

    async def close(self) -> None:
        """Finish queued writes and close."""
        self.db.close()

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the database answers."""
        self.db.read(lambda conn: conn.execute("SELECT 1").fetchone())

    # Jobs and fragments.

    async def save_job(self, job: Job) -> None:
        """Insert or update the job's own row (its fragments are saved one by one)."""
        await self.db.write(lambda conn: _insert(conn, job))

    async def create_job(self, job: Job, max_pending: int = 0) -> Job:
        """Insert a new job; with an idempotency key the caller's job already stored under it
        is returned instead. With `max_pending` > 0, PendingCapError when the job's owner has
        that many jobs unfinished already (checked and inserted in one transaction)."""

        def write(conn: sqlite3.Connection) -> Job | None:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT id FROM jobs WHERE coalesce(owner, '') = ? AND idempotency_key = ?",
                    (job.owner or "", job.idempotency_key),
                ).fetchone()
                if row is not None:
                    return _job(
                        conn, conn.execute("SELECT * FROM jobs WHERE id = ?", (row[0],)).fetchone()
                    )
            if max_pending > 0 and job.owner is not None:
                (pending,) = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state NOT IN (?, ?)",
                    (job.owner, JobState.COMPLETED.value, JobState.FAILED.value),
                ).fetchone()
                if pending >= max_pending:
                    raise PendingCapError(job.owner, pending, max_pending)
            _insert(conn, job)
            return None

        found = await self.db.write(write)
        return job if found is None else found

    async def save_fragment(self, job_id: str, fragment: Fragment) -> None:
        """Insert or update one fragment attempt."""
        row = (
            fragment.fragment_id,
            fragment.attempt,
            job_id,
            fragment.node_id,
            fragment.status.value,
            fragment.reservation_id,
            fragment.start,
            fragment.end,
            fragment.error,
        )

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO fragments (fragment_id, attempt, job_id, node_id, status, "
                'reservation_id, start, "end", error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) '
                "ON CONFLICT (fragment_id, attempt) DO UPDATE SET node_id = excluded.node_id, "
                "status = excluded.status, reservation_id = excluded.reservation_id, start = "
                'excluded.start, "end" = excluded."end", error = excluded.error',
                row,
            )

        await self.db.write(write)

    def job(self, job_id: str) -> Job | None:
        """The job with its fragment attempts, or None."""

        def read(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _job(conn, row)

        return self.db.read(read)

    def unfinished_jobs(self) -> list[Job]:
        """Jobs that have not ended, oldest first (what a restart drives on)."""

        def read(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state NOT IN (?, ?) ORDER BY created_at",
                (JobState.COMPLETED.value, JobState.FAILED.value),
            ).fetchall()
            return [_job(conn, row) for row in rows]

        return self.db.read(read)

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        rows = self.db.read(
            lambda conn: conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        )
        return {str(state): int(count) for state, count in rows}

    # Reservations, adverts, quality, decisions: append-only records.

    async def add_reservation_event(
        self,
        reservation_id: str,
        node_id: str,
        job_id: str | None,
        kind: str,
        at: float,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one event of a reservation's life as the coordinator saw it."""
        row = (reservation_id, node_id, job_id, kind, at, orjson.dumps(detail or {}).decode())
        await self.db.write(
            lambda conn: conn.execute(
                "INSERT INTO reservation_events (reservation_id, node_id, job_id, kind, at, "
                "detail) VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
        )

    def reservation_events(self, reservation_id: str | None = None) -> list[dict[str, Any]]:
        """Reservation events in order (of one reservation, or all)."""
        sql = "SELECT * FROM reservation_events"
        args: tuple[str, ...] = ()
        if reservation_id is not None:
            sql, args = sql + " WHERE reservation_id = ?", (reservation_id,)
        rows = self.db.read(lambda conn: conn.execute(sql + " ORDER BY seq", args).fetchall())
        return [{**dict(row), "detail": orjson.loads(row["detail"])} for row in rows]

    async def save_advert(self, advert: Advert, received_at: float) -> None:
        """Keep a node's latest advert, reloaded (stale) after a restart."""
        row = (advert.node_id, advert.model_dump_json(), received_at)
        await self.db.write(
            lambda conn: conn.execute(
                "INSERT INTO adverts (node_id, advert, received_at) VALUES (?, ?, ?) ON "
                "CONFLICT (node_id) DO UPDATE SET advert = excluded.advert, received_at = "
                "excluded.received_at",
                row,
            )
        )

    def adverts(self) -> list[tuple[Advert, float]]:
        """Every node's latest advert and when it arrived."""
        rows = self.db.read(
            lambda conn: conn.execute("SELECT advert, received_at FROM adverts").fetchall()
        )
        return [(Advert.model_validate_json(row[0]), float(row[1])) for row in rows]

    async def add_quality(self, report: QualityReport, received_at: float) -> None:
        """Persist a quality report with its timestamps (FR-008)."""
        row = (
            report.kind,
            report.reporter,
            report.node_id,
            report.peer_id,
            report.fidelity,
            report.latency_ms,
            report.loss,
            report.measured_at,
            received_at,
        )
        await self.db.write(
            lambda conn: conn.execute(
                "INSERT INTO quality_reports (kind, reporter, node_id, peer_id, fidelity, "
                "latency_ms, loss, measured_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )

    async def prune_quality(self, older_than: float, keep_rows: int) -> int:
        """Delete quality reports received before `older_than` and, per node, all but the
        newest `keep_rows`; how many were deleted."""

        def write(conn: sqlite3.Connection) -> int:
            old = conn.execute("DELETE FROM quality_reports WHERE received_at < ?", (older_than,))
            over = conn.execute(
                "DELETE FROM quality_reports WHERE seq IN (SELECT seq FROM (SELECT seq, "
                "ROW_NUMBER() OVER (PARTITION BY node_id ORDER BY seq DESC) AS newer "
                "FROM quality_reports) WHERE newer > ?)",
                (keep_rows,),
            )
            return int(old.rowcount) + int(over.rowcount)

        return await self.db.write(write)

    def quality_reports(self, node_id: str) -> list[dict[str, Any]]:
        """Quality reports about one node, oldest first."""
        rows = self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM quality_reports WHERE node_id = ? ORDER BY measured_at", (node_id,)
            ).fetchall()
        )
        return [dict(row) for row in rows]

    async def add_decision(
        self,
        job_id: str,
        fragment_id: str,
        attempt: int,
        node_id: str | None,
        at: float,
        reason: str,
        snapshot: dict[str, object],
    ) -> None:
        """Record a planning decision with the registry snapshot it was made on."""
        row = (job_id, fragment_id, attempt, node_id, at, reason, orjson.dumps(snapshot).decode())
        await self.db.write(
            lambda conn: conn.execute(
                "INSERT INTO decisions (job_id, fragment_id, attempt, node_id, at, reason, "
                "snapshot) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )

    async def prune_decisions(self, older_than: float) -> int:
        """Delete decisions made before `older_than` unless their job is still live (its plan
        may yet be retried or recovered); how many were deleted."""
        live = tuple(state.value for state in JobState if not state.terminal)
        marks = ", ".join("?" * len(live))

        def write(conn: sqlite3.Connection) -> int:
            gone = conn.execute(
                "DELETE FROM decisions WHERE at < ? AND job_id NOT IN "
                f"(SELECT id FROM jobs WHERE state IN ({marks}))",
                (older_than, *live),
            )
            return int(gone.rowcount)

        return await self.db.write(write)

    def decisions(self, job_id: str) -> list[dict[str, Any]]:
        """A job's decisions in order, each with its snapshot."""
        rows = self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM decisions WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        )
        return [{**dict(row), "snapshot": orjson.loads(row["snapshot"])} for row in rows]


def _insert(conn: sqlite3.Connection, job: Job) -> None:
    row = (
        job.id,
        job.state.value,
        job.qasm,
        job.shots,
        job.seed,
        job.min_fidelity,
        job.owner,
        job.idempotency_key,
        None if job.counts is None else orjson.dumps(job.counts).decode(),
        job.error,
        job.created_at,
        job.updated_at,
        None if job.metadata is None else orjson.dumps(job.metadata).decode(),
    )
    conn.execute(
        "INSERT INTO jobs (id, state, qasm, shots, seed, min_fidelity, owner, idempotency_key, "
        "counts, error, created_at, updated_at, metadata) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, counts = excluded.counts, "
        "error = excluded.error, updated_at = excluded.updated_at, "
        "metadata = excluded.metadata",
        row,
    )


def _job(conn: sqlite3.Connection, row: sqlite3.Row) -> Job:
    fragments = conn.execute(
        "SELECT * FROM fragments WHERE job_id = ? ORDER BY fragment_id, attempt", (row["id"],)
    ).fetchall()
    return Job(
        id=row["id"],
        state=JobState(row["state"]),
        qasm=row["qasm"],
        shots=row["shots"],
        seed=row["seed"],
        min_fidelity=row["min_fidelity"],
        owner=row["owner"],
        idempotency_key=row["idempotency_key"],
        counts=None if row["counts"] is None else orjson.loads(row["counts"]),
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        metadata=None if row["metadata"] is None else orjson.loads(row["metadata"]),
        fragments=tuple(
            Fragment(
                fragment_id=f["fragment_id"],
                attempt=f["attempt"],
                node_id=f["node_id"],
                status=FragmentStatus(f["status"]),
                reservation_id=f["reservation_id"],
                start=f["start"],
                end=f["end"],
                error=f["error"],
            )
            for f in fragments
        ),
    )
