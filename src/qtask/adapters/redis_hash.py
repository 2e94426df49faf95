"""A Task as a Redis hash, and the Redis client's replies as Python values.

The hash's fields are described in adapters/redis_store.py's docstring: each Task field is a
hash field, absent when None; `info` and `result` are JSON, `program` raw bytes, floats in
Python's round-trip repr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from qtask.domain.task import LEGACY_BACKEND, Status, Task, info_from_json, info_to_json


def text(value: object) -> str:
    """A reply item as text (the client returns bytes; it is typed to allow str too)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected Redis reply item {value!r}")


def bytes_hash(raw: Mapping[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    """A HGETALL reply with bytes keys and values, however the client's types describe it."""
    return {_raw(k): _raw(v) for k, v in raw.items()}


def _raw(value: bytes | str) -> bytes:
    """A reply item as bytes."""
    return value if isinstance(value, bytes) else value.encode()


def pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A HGETALL reply from a script (a flat list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def to_hash(task: Task) -> list[str | bytes]:
    """The task as flat field/value items for HSET; None fields are left out."""
    info_json = info_to_json(task.info)
    optional: dict[str, str | bytes | None] = {
        "program": task.program,
        "seed": None if task.seed is None else str(task.seed),
        "result": None if task.result is None else json.dumps(task.result, separators=(",", ":")),
        "error": task.error,
        "last_error": task.last_error,
        "started_at": None if task.started_at is None else repr(task.started_at),
        "finished_at": None if task.finished_at is None else repr(task.finished_at),
        "idempotency_key": task.idempotency_key,
        "circuit_object": task.circuit_object,
        "result_object": task.result_object,
        "owner": task.owner,
        "completed_by": task.completed_by,
        "completed_attempt": (
            None if task.completed_attempt is None else str(task.completed_attempt)
        ),
        "memory": "1" if task.memory else None,
    }
    fields: list[str | bytes] = [
        "id", task.id,
        "status", task.status.value,
        "source", task.source,
        "info", info_json,
        "shots", str(task.shots),
        "attempts", str(task.attempts),
        "created_at", repr(task.created_at),
        "backend", task.backend,
    ]  # fmt: skip
    for name, value in optional.items():
        if value is not None:
            fields += [name, value]
    return fields


def from_hash(raw: dict[bytes, bytes]) -> Task:
    """The task a hash holds (as written by to_hash and the scripts)."""

    def text(name: bytes) -> str | None:
        value = raw.get(name)
        return None if value is None else value.decode()

    def number(name: bytes) -> float | None:
        value = raw.get(name)
        return None if value is None else float(value)

    seed = raw.get(b"seed")
    result = raw.get(b"result")
    completed_attempt = raw.get(b"completed_attempt")
    return Task(
        id=raw[b"id"].decode(),
        source=raw[b"source"].decode(),
        info=info_from_json(raw[b"info"]),
        shots=int(raw[b"shots"]),
        seed=None if seed is None else int(seed),
        program=raw.get(b"program"),
        status=Status(raw[b"status"].decode()),
        attempts=int(raw[b"attempts"]),
        result=None if result is None else json.loads(result),
        error=text(b"error"),
        last_error=text(b"last_error"),
        created_at=float(raw[b"created_at"]),
        started_at=number(b"started_at"),
        finished_at=number(b"finished_at"),
        idempotency_key=text(b"idempotency_key"),
        circuit_object=text(b"circuit_object"),
        result_object=text(b"result_object"),
        owner=text(b"owner"),
        completed_by=text(b"completed_by"),
        completed_attempt=None if completed_attempt is None else int(completed_attempt),
        memory=raw.get(b"memory") == b"1",
        # Hashes written before tasks named a backend have no such field.
        backend=text(b"backend") or LEGACY_BACKEND,
    )
