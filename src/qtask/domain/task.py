"""The task: an immutable record of one submitted circuit and what became of it.

Storage adapters persist these; nothing in this module performs I/O.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from dataclasses import dataclass, field, replace

import orjson

# The states and the rules of moving between them live in domain.lifecycle (re-exported here,
# where most code looks for Status).
from qtask.domain.lifecycle import Status as Status
from qtask.domain.lifecycle import check_transition


class Encoding(enum.StrEnum):
    """How the program a worker runs is stored.

    QASM2 and QASM3 mean the source itself parses with Qiskit's fast native importers; QPY means
    the API parsed the source with the slow ANTLR importer once and stored the result in Qiskit's
    binary format, so that no worker has to parse it again.
    """

    QASM2 = "qasm2"
    QASM3 = "qasm3"
    QPY = "qpy"


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """What ingestion learned about a circuit; workers use it to plan, users to see."""

    encoding: Encoding
    num_qubits: int
    num_clbits: int
    num_operations: int
    # Clifford-only circuits run with Aer's stabilizer method, whose memory grows polynomially
    # (execution.methods chooses the method from this and num_qubits).
    clifford: bool
    # True when the circuit has an instruction Aer cannot run as is and must be transpiled.
    needs_transpile: bool
    # False when the circuit measures nothing; the worker then measures every qubit.
    measured: bool


def info_to_json(info: CircuitInfo) -> str:
    """Encode a CircuitInfo as compact JSON (how every store keeps it)."""
    fields = {name: getattr(info, name) for name in CircuitInfo.__dataclass_fields__}
    fields["encoding"] = info.encoding.value
    return orjson.dumps(fields).decode()  # the bytes json.dumps gives, at a fifth of its cost


def info_from_json(text: str | bytes) -> CircuitInfo:
    """Decode what info_to_json wrote."""
    fields = json.loads(text)
    fields["encoding"] = Encoding(fields["encoding"])
    return CircuitInfo(**fields)


# The backend of every task stored before tasks named one: they all ran on ideal Aer.
LEGACY_BACKEND = "aer"


def new_task_id() -> str:
    """Return a fresh unguessable task id (122 random bits)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Task:
    """One submitted circuit and everything known about its execution."""

    id: str
    source: str
    info: CircuitInfo
    shots: int
    seed: int | None = None
    # The program in `info.encoding` when that differs from the source (QPY bytes), else None.
    program: bytes | None = None
    status: Status = Status.QUEUED
    attempts: int = 0
    result: dict[str, int] | None = None
    error: str | None = None
    # The reason of the most recent failed attempt, kept to explain a task that is given up on.
    last_error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None
    # Where the object store keeps this task's circuit and, once completed, its result; None
    # when no object store is configured.
    circuit_object: str | None = None
    result_object: str | None = None
    # The name of the API key that submitted the task; None when API keys are off.
    owner: str | None = None
    # Which run stored the completed transition: its worker's id and attempt number (None
    # unless completed, and for tasks completed before this was recorded). Never shown to
    # clients; it lets an operator match the one transition with one `completed` log line.
    completed_by: str | None = None
    completed_attempt: int | None = None
    # Whether the client asked for the per-shot results (`"memory": true`). They are not held
    # here: the store keeps them beside the result (TaskStore.memories) or in the result object.
    memory: bool = False
    # The configured backend the task runs on (domain.backends); records stored before tasks
    # named one read as LEGACY_BACKEND.
    backend: str = LEGACY_BACKEND

    def moved(self, status: Status, **changes: object) -> Task:
        """Return a copy in `status`, after checking the move against the state machine."""
        check_transition(self.status, status)
        return replace(self, status=status, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What a client reads of a task: its status and, once it ended, its counts or error.

    Reading this is the API's hot path (clients poll it), so stores fetch only these fields.
    """

    id: str
    status: Status
    result: dict[str, int] | None = None
    error: str | None = None
    owner: str | None = None
    # Whether the per-shot results were asked for; `per_shot` holds them once a read loaded
    # them (stores never do: the service adds them to the reads that show them).
    memory: bool = False
    per_shot: list[str] | None = None

    def visible_to(self, caller: str | None) -> bool:
        """Whether `caller` (an API key's name, None when keys are off) may see this task."""
        return caller is None or caller == self.owner


def result_document(
    task: Task,
    counts: dict[str, int],
    *,
    method: str | None = None,
    memory: list[str] | None = None,
    remote_job: str | None = None,
) -> bytes:
    """The result object: the counts and what produced them. `method` when known (a result
    written back from the record alone does not know it; a remote provider does not say),
    `memory` when the task asked for per-shot results (the API reads them from here), and
    `remote_job`, the provider's job id, for a task that ran remotely."""
    document: dict[str, object] = {
        "task_id": task.id,
        "status": "completed",
        "result": counts,
        "shots": task.shots,
        "seed": task.seed,
        "qubits": task.info.num_qubits,
        "backend": task.backend,
        "method": method,
        "attempts": task.completed_attempt or task.attempts,
        "circuit_object": task.circuit_object,
        "completed_at": task.finished_at or time.time(),
        # The input itself: the completed area holds the whole job once its pending objects
        # are deleted (domain.object_keys).
        "circuit": task.source,
    }
    if remote_job is not None:
        document["remote_job"] = remote_job
    if memory is not None:
        document["memory"] = memory
    return orjson.dumps(document)
