"""The coordinator database's schema, as numbered, reversible migrations (FR-010).

Each migration has an `upgrade` and a `downgrade` (lists of SQL statements); the database's
version is one row in `schema_version`. `migrate(conn, to)` walks up or down one step at a
time, each step in its own transaction, so a failure leaves the database at the last version
that completed. `qtask coordinator --migrate-to N` runs it by hand; the coordinator upgrades to
HEAD when it starts. Alembic would do the same with SQLAlchemy underneath, which qtask does not
use anywhere else: these few tables do not justify it.

A new migration is appended with the next number; a released one is never edited.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from qtask.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: how to go up to `version`, and back down to `version - 1`."""

    version: int
    name: str
    upgrade: tuple[str, ...]
    downgrade: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs, fragments, reservation events, adverts, quality reports",
        (
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                qasm TEXT NOT NULL,
                shots INTEGER NOT NULL,
                seed INTEGER,
                min_fidelity REAL NOT NULL DEFAULT 0,
                owner TEXT,
                counts TEXT,
                error TEXT,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            "CREATE INDEX jobs_state ON jobs (state)",
            """CREATE TABLE fragments (
                fragment_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                job_id TEXT NOT NULL REFERENCES jobs (id),
                node_id TEXT NOT NULL,
                status TEXT NOT NULL,
                reservation_id TEXT,
                start REAL,
                "end" REAL,
                error TEXT,
                PRIMARY KEY (fragment_id, attempt)
            )""",
            "CREATE INDEX fragments_job ON fragments (job_id)",
            """CREATE TABLE reservation_events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                reservation_id TEXT NOT NULL,
                node_id TEXT NOT NULL,
                job_id TEXT,
                kind TEXT NOT NULL,
                at REAL NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX reservation_events_id ON reservation_events (reservation_id)",
            """CREATE TABLE adverts (
                node_id TEXT PRIMARY KEY,
                advert TEXT NOT NULL,
                received_at REAL NOT NULL
            )""",
            """CREATE TABLE quality_reports (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                reporter TEXT NOT NULL,
                node_id TEXT NOT NULL,
                peer_id TEXT,
                fidelity REAL,
                latency_ms REAL,
                loss REAL,
                measured_at REAL NOT NULL,
                received_at REAL NOT NULL
            )""",
            "CREATE INDEX quality_reports_node ON quality_reports (node_id, measured_at)",
        ),
        (
            "DROP TABLE quality_reports",
            "DROP TABLE adverts",
            "DROP TABLE reservation_events",
            "DROP TABLE fragments",
            "DROP TABLE jobs",
        ),
    ),
    Migration(
        2,
        "decisions, each with the registry snapshot it was made on (FR-008)",
        (
            """CREATE TABLE decisions (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                job_id TEXT NOT NULL,
                fragment_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                node_id TEXT,
                at REAL NOT NULL,
                reason TEXT NOT NULL,
                snapshot TEXT NOT NULL
            )""",
            "CREATE INDEX decisions_job ON decisions (job_id)",
        ),
        ("DROP TABLE decisions",),
    ),
    Migration(
        3,
        "jobs.idempotency_key: a retried submission (the mesh backend's) gets the same job",
        (
            "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
            # coalesce: SQLite's unique indexes count NULLs as distinct, and keys off is NULL.
            "CREATE UNIQUE INDEX jobs_idempotency ON jobs (coalesce(owner, ''), idempotency_key) "
            "WHERE idempotency_key IS NOT NULL",
        ),
        ("DROP INDEX jobs_idempotency", "ALTER TABLE jobs DROP COLUMN idempotency_key"),
    ),
    Migration(
        4,
        "jobs.metadata: a finished job's route, transfers and time per stage (mesh part 2)",
        ("ALTER TABLE jobs ADD COLUMN metadata TEXT",),
        ("ALTER TABLE jobs DROP COLUMN metadata",),
    ),
)
HEAD = MIGRATIONS[-1].version


def current_version(conn: sqlite3.Connection) -> int:
    """The database's schema version (0: empty)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: sqlite3.Connection, to: int = HEAD) -> list[str]:
    """Upgrade or downgrade to version `to`, one step per transaction; the steps taken.

    `conn` must be in autocommit mode (isolation_level=None). ConfigError for a version that
    does not exist, or a database newer than this qtask knows.
    """
    if not 0 <= to <= HEAD:
        raise ConfigError(f"schema version {to} does not exist; this qtask knows 0 to {HEAD}")
    version = current_version(conn)
    if version > HEAD:
        raise ConfigError(
            f"the database is at schema version {version}, newer than this qtask's {HEAD}: "
            "run the newer qtask, or downgrade with it"
        )
    steps = []
    while version != to:
        if version < to:
            step = MIGRATIONS[version]  # version v+1 is at index v
            statements, new = step.upgrade, step.version
            label = f"upgrade {version} -> {new}: {step.name}"
        else:
            step = MIGRATIONS[version - 1]
            statements, new = step.downgrade, step.version - 1
            label = f"downgrade {version} -> {new}: {step.name}"
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (new,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        steps.append(label)
        version = new
    return steps
