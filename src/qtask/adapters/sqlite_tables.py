"""The embedded store's tables: their schema, the migration of older databases, a Task as a row."""

from __future__ import annotations

import json
import sqlite3

from qtask.domain.task import LEGACY_BACKEND, Status, Task, info_from_json, info_to_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    program BLOB,
    info TEXT NOT NULL,
    shots INTEGER NOT NULL,
    seed INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    last_error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_owner TEXT,
    lease_expires REAL,
    idempotency_key TEXT UNIQUE,
    circuit_object TEXT,
    result_object TEXT,
    owner TEXT,
    completed_by TEXT,
    completed_attempt INTEGER,
    memory INTEGER NOT NULL DEFAULT 0,
    memory_data TEXT,
    backend TEXT
);
-- Only unfinished tasks are indexed for the queue, so claiming stays fast however many
-- completed tasks the table keeps.
CREATE INDEX IF NOT EXISTS tasks_active ON tasks (seq) WHERE status IN ('queued', 'running');
-- Ended tasks by when they ended, for the retention pass.
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at)
    WHERE status IN ('completed', 'failed');
-- Unfinished tasks by id: active() pages through them with the last id as the cursor.
CREATE INDEX IF NOT EXISTS tasks_active_id ON tasks (id) WHERE status IN ('queued', 'running');
-- Small compare-and-set records (TaskStore.swap_marker).
CREATE TABLE IF NOT EXISTS markers (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Submitted remote tasks (domain.remote.RemoteJob; adapters.sqlite_remote), by next poll.
CREATE TABLE IF NOT EXISTS remote_jobs (
    task_id TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    job_id TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    next_poll_at REAL NOT NULL,
    polls INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS remote_jobs_due ON remote_jobs (next_poll_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    at REAL NOT NULL
);
"""

# Made after the migration, which may add the column they index: each key's unfinished tasks;
# and the listings, newest first (every task, and one key's), which page by (created_at, id).
OWNER_INDEXES = (
    """CREATE INDEX IF NOT EXISTS tasks_owner_active ON tasks (owner)
    WHERE status IN ('queued', 'running') AND owner IS NOT NULL""",
    "CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at, id)",
    "CREATE INDEX IF NOT EXISTS tasks_owner_created ON tasks (owner, created_at, id)",
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older qtask up to SCHEMA: add the columns it lacks."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "owner" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN owner TEXT")
    if "completed_by" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN completed_by TEXT")
        conn.execute("ALTER TABLE tasks ADD COLUMN completed_attempt INTEGER")
    if "memory" not in columns:
        # memory: the per-shot results were asked for; memory_data: them, as a JSON list,
        # when no object store keeps them.
        conn.execute("ALTER TABLE tasks ADD COLUMN memory INTEGER NOT NULL DEFAULT 0")
        conn.execute("ALTER TABLE tasks ADD COLUMN memory_data TEXT")
    if "backend" not in columns:  # rows from before backends: NULL, read as LEGACY_BACKEND
        conn.execute("ALTER TABLE tasks ADD COLUMN backend TEXT")
    for index in OWNER_INDEXES:
        conn.execute(index)


COLUMNS = (
    "id, status, source, program, info, shots, seed, attempts, result, error, last_error,"
    " created_at, started_at, finished_at, idempotency_key, circuit_object, result_object, owner,"
    " completed_by, completed_attempt, memory, backend"
)
INSERT = f"INSERT INTO tasks ({COLUMNS}) VALUES ({', '.join('?' * 22)})"


def to_row(task: Task) -> tuple[object, ...]:
    """The task as INSERT's parameters (COLUMNS' order)."""
    info_json = info_to_json(task.info)
    return (
        task.id,
        task.status.value,
        task.source,
        task.program,
        info_json,
        task.shots,
        task.seed,
        task.attempts,
        None if task.result is None else json.dumps(task.result, separators=(",", ":")),
        task.error,
        task.last_error,
        task.created_at,
        task.started_at,
        task.finished_at,
        task.idempotency_key,
        task.circuit_object,
        task.result_object,
        task.owner,
        task.completed_by,
        task.completed_attempt,
        int(task.memory),
        task.backend,
    )


def from_row(row: sqlite3.Row) -> Task:
    """The task a row of `tasks` holds."""
    return Task(
        id=row["id"],
        source=row["source"],
        info=info_from_json(row["info"]),
        shots=row["shots"],
        seed=row["seed"],
        program=row["program"],
        status=Status(row["status"]),
        attempts=row["attempts"],
        result=None if row["result"] is None else json.loads(row["result"]),
        error=row["error"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        idempotency_key=row["idempotency_key"],
        circuit_object=row["circuit_object"],
        result_object=row["result_object"],
        owner=row["owner"],
        completed_by=row["completed_by"],
        completed_attempt=row["completed_attempt"],
        memory=bool(row["memory"]),
        backend=row["backend"] or LEGACY_BACKEND,
    )
