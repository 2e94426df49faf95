"""The object store's key layout (the `002` seed's bucket): a job's input and record under a
pending area, its result under a completed area. Pure functions of a task id, no I/O (the
adapter, qtask.adapters.objects, stores what it is given).

- `pending/{id[:2]}/{id}.qasm`: the circuit source, written at submit before the record that
  points to it (Task.circuit_object); deleted once the task completed, whose result document
  then carries it (`"circuit"`). A task that ends in error keeps it here, with its record,
  until retention removes both (nothing completed to move it to).
- `pending/{id[:2]}/{id}.job.json`: a submitted remote task's job record (domain.remote),
  from the provider's accept until the poller ends the task.
- `completed/{id[:2]}/{id}.json`: the result document (domain.task.result_document), written
  before the record says completed (Task.result_object).

The poller's (and the worker's) "move" is: write the completed object, complete the record, then
delete the pending ones. A crash between leaves pending objects of a completed task, which the
poller's next pass deletes (for the worker: its NATS redelivery; embedded, retention), and
nothing is fetched or run twice.

Versions before the areas wrote `circuits/{id[:2]}/{id}.qasm` and `results/{id[:2]}/{id}.json`.
Their records name those keys, so they keep being read and written there; only code that derives
a key from an id (result_keys) tries both.
"""

from __future__ import annotations

import re

PENDING_AREA = "pending"
COMPLETED_AREA = "completed"
# What versions before the areas used (still read, never written for new tasks).
LEGACY_CIRCUITS = "circuits"
LEGACY_RESULTS = "results"

_TASK_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _checked_task_id(task_id: str) -> str:
    """Return `task_id` if it is safe as one segment of a key; raise ValueError otherwise.

    Allowed: 1 to 200 of A-Z a-z 0-9 `_` `.` `-`, without `..` (so no `/`, no traversal, no
    empty id). Task ids are UUIDs, which always pass.
    """
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id) or ".." in task_id:
        raise ValueError(f"invalid task id for an object key: {task_id!r}")
    return task_id


def _sharded(area: str, task_id: str, suffix: str) -> str:
    """`{area}/{first two characters of the id}/{id}{suffix}`.

    The shard level keeps directories small where the store is a filesystem (a local
    directory, or an S3 server over one such as rclone's): a million tasks make 256 folders
    of about 4,000 files for random UUIDs, not one folder of a million. It also spreads
    concurrent writes, which rclone's S3 server needs: its directory cache can mis-handle
    simultaneous uploads into one folder (seen here with 100 parallel PUTs, about once in 150
    rounds), after which a GET of that key fails until the cache refreshes.
    """
    checked = _checked_task_id(task_id)
    return f"{area}/{checked[:2]}/{checked}{suffix}"


def circuit_key(task_id: str) -> str:
    """Key of a task's submitted circuit while it has not completed:
    `pending/{id[:2]}/{id}.qasm`."""
    return _sharded(PENDING_AREA, task_id, ".qasm")


def remote_job_key(task_id: str) -> str:
    """Key of a submitted remote task's job record: `pending/{id[:2]}/{id}.job.json`."""
    return _sharded(PENDING_AREA, task_id, ".job.json")


def result_key(task_id: str) -> str:
    """Key of a completed task's result document (JSON): `completed/{id[:2]}/{id}.json`."""
    return _sharded(COMPLETED_AREA, task_id, ".json")


def result_keys(task_id: str) -> tuple[str, str]:
    """Where a task's result document may be, newest layout first (for reads that know only
    the id): `completed/…json`, then the `results/…json` of versions before the areas."""
    return result_key(task_id), _sharded(LEGACY_RESULTS, task_id, ".json")


def program_key(task_id: str) -> str:
    """Key of a task's compiled program (QPY): `programs/{id[:2]}/{id}.qpy`."""
    return _sharded("programs", task_id, ".qpy")


def pending_keys(task_id: str) -> tuple[str, str]:
    """The pending objects a task may have (its circuit, its remote job record): what a move
    deletes once the task completed. Legacy `circuits/` keys are not among them."""
    return circuit_key(task_id), remote_job_key(task_id)
