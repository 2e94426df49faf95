"""The object store's key layout: where each task's objects live, so every process agrees.

Pure functions of a task id, no I/O (the adapter, qtask.adapters.objects, stores what it is
given). Every key is sharded by the id's first two characters; see `_sharded` for why. The
remote job record's key (`remote_job_key`) is with the remote job model, qtask.domain.remote.
"""

from __future__ import annotations

import re

_TASK_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _checked_task_id(task_id: str) -> str:
    """Return `task_id` if it is safe as one segment of a key; raise ValueError otherwise.

    Allowed: 1 to 200 of A-Z a-z 0-9 `_` `.` `-`, without `..` (so no `/`, no traversal, no
    empty id). Task ids are UUIDs, which always pass.
    """
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id) or ".." in task_id:
        raise ValueError(f"invalid task id for an object key: {task_id!r}")
    return task_id


def _sharded(kind: str, task_id: str, suffix: str) -> str:
    """`{kind}/{first two characters of the id}/{id}{suffix}`.

    The shard level keeps directories small where the store is a filesystem (a local
    directory, or an S3 server over one such as rclone's): a million tasks make 256 folders
    of about 4,000 files for random UUIDs, not one folder of a million. It also spreads
    concurrent writes, which rclone's S3 server needs: its directory cache can mis-handle
    simultaneous uploads into one folder (seen here with 100 parallel PUTs, about once in 150
    rounds), after which a GET of that key fails until the cache refreshes.
    """
    checked = _checked_task_id(task_id)
    return f"{kind}/{checked[:2]}/{checked}{suffix}"


def circuit_key(task_id: str) -> str:
    """Key of a task's submitted circuit source: `circuits/{id[:2]}/{id}.qasm`."""
    return _sharded("circuits", task_id, ".qasm")


def result_key(task_id: str) -> str:
    """Key of a task's result document (JSON): `results/{id[:2]}/{id}.json`."""
    return _sharded("results", task_id, ".json")


def program_key(task_id: str) -> str:
    """Key of a task's compiled program (QPY): `programs/{id[:2]}/{id}.qpy`."""
    return _sharded("programs", task_id, ".qpy")
