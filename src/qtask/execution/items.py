"""What crosses the pipe between a worker and its child processes: tasks to run, outcomes.

Kept apart from the Aer code so that a worker's main process, which only schedules and records,
never imports Qiskit (its children do, from the forkserver's preload): that saves about half a
second of start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtask.domain.task import LEGACY_BACKEND, Encoding, Task


@dataclass(frozen=True, slots=True)
class RunItem:
    """What a child needs to run one task; small and picklable."""

    task_id: str
    encoding: Encoding
    source: str
    program: bytes | None
    shots: int
    seed: int | None
    measured: bool
    needs_transpile: bool
    # What the child needs to choose the simulation method (execution.methods).
    num_qubits: int
    clifford: bool
    # Return each shot's bitstring too (Aer's memory=True).
    memory: bool = False
    # The configured backend the task names (execution.local runs it there).
    backend: str = LEGACY_BACKEND

    @classmethod
    def from_task(cls, task: Task) -> RunItem:
        """Take the fields a run needs from a task."""
        return cls(
            task_id=task.id,
            encoding=task.info.encoding,
            source=task.source,
            program=task.program,
            shots=task.shots,
            seed=task.seed,
            measured=task.info.measured,
            needs_transpile=task.info.needs_transpile,
            num_qubits=task.info.num_qubits,
            clifford=task.info.clifford,
            memory=task.memory,
            backend=task.backend,
        )


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """Counts, or an error message a user can act on, for one task."""

    task_id: str
    counts: dict[str, int] | None = None
    error: str | None = None
    seconds: float = 0.0
    # The Aer method that ran (or tried to run) the circuit; None when it never reached Aer.
    method: str | None = None
    # One bitstring per shot, keyed as the counts are; only for items that asked for it.
    memory: list[str] | None = None
