"""The execution backend port: what a backend can run, and the rule that admits a circuit to it.

A backend is a named place where circuits run (Aer ideal, Aer with a device's noise, later remote
providers). Its `BackendCapabilities` say what it accepts; `admit` applies them to a circuit at
submit, so a circuit that cannot run there is refused with 422 naming the limit instead of failing
in a worker. Pure data and rules: no I/O, no Qiskit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from qtask.domain.task import LEGACY_BACKEND, CircuitInfo
from qtask.errors import BackendLimitError, InvalidRequestError

__all__ = [
    "LEGACY_BACKEND",
    "BackendCapabilities",
    "BackendKind",
    "Backends",
    "ExecutionBackend",
    "GateError",
]


class BackendKind(enum.StrEnum):
    """Where a backend runs: in the worker's child processes, or at a provider."""

    LOCAL = "local"
    REMOTE = "remote"


@dataclass(frozen=True, slots=True)
class GateError:
    """One calibrated gate of a device: what a Qiskit Target's InstructionProperties need."""

    gate: str
    qubits: tuple[int, ...]
    error: float | None
    # Seconds; None when the device does not report it.
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What one backend accepts and offers; GET /backends shows it, admission applies it."""

    name: str
    # The configuration's `type` (aer, aer_device, ...).
    type: str
    kind: BackendKind
    # The widest circuit each simulation method the backend uses accepts. A circuit is
    # admitted when some method that may run it takes its width (see `admit`).
    max_qubits: Mapping[str, int]
    max_shots: int
    # The device's physical qubits (what coupling_map spans); None for a simulator with none.
    device_qubits: int | None = None
    # None where any gate is accepted (the backend transpiles or runs it as it is).
    basis_gates: tuple[str, ...] | None = None
    # Directed pairs of physical qubits a two-qubit gate may act on; None: all-to-all.
    coupling_map: tuple[tuple[int, int], ...] | None = None
    # The noise model's name (a device), None for an ideal simulator.
    noise: str | None = None
    # Per-gate errors and durations of the noise model; None for an ideal simulator.
    gate_errors: tuple[GateError, ...] | None = None
    memory: bool = True
    seeds: bool = True
    cancel: bool = True

    @property
    def num_qubits(self) -> int:
        """The device's qubits; for a simulator without a device, the widest circuit any of
        its methods accepts."""
        if self.device_qubits is not None:
            return self.device_qubits
        return max(self.max_qubits.values())

    def check_seed(self, seed: int | None) -> None:
        """Raise InvalidRequestError (400) for a seed this backend would ignore.

        A seed promises counts that repeat; hardware (and Braket's simulators) cannot keep that
        promise, and a user who sent one would otherwise trust counts that do not repeat.
        """
        if seed is not None and not self.seeds:
            raise InvalidRequestError(
                f"Backend {self.name} does not honour seeds (its counts do not repeat); "
                "leave seed out to run on it, or pick a backend whose seeds is true "
                "(GET /backends)."
            )

    def admit(self, info: CircuitInfo, shots: int) -> None:
        """Raise BackendLimitError (422) naming the limit a circuit is over; else return.

        Clifford circuits may use the stabilizer method where the backend has it; any other
        circuit needs a method that is not stabilizer-only.
        """
        if not 1 <= shots <= self.max_shots:
            raise BackendLimitError(
                f"shots must be between 1 and {self.max_shots} on backend {self.name}; got {shots}."
            )
        usable = [
            qubits
            for method, qubits in self.max_qubits.items()
            if info.clifford or method != "stabilizer"
        ]
        limit = max(usable, default=0)
        if info.num_qubits > limit:
            raise BackendLimitError(
                f"The circuit has {info.num_qubits} qubits; backend {self.name} takes at most "
                f"{limit}{'' if info.clifford else ' for a circuit that is not Clifford'}."
            )


class ExecutionBackend(Protocol):
    """A backend circuits run on.

    Local backends (`kind` local) run in the worker's child processes, batches included: the
    worker sends its pool run items that name the task's backend, and the child runs each on
    that backend (qtask.execution.local). Remote backends will add submit, poll and cancel.
    """

    @property
    def capabilities(self) -> BackendCapabilities:
        """What the backend accepts and offers."""
        ...

    async def health(self) -> str:
        """ "ok", or why the backend cannot take work now."""
        ...


class Backends(Protocol):
    """Every configured backend by name, and the default one: what the service admits
    submissions to and what GET /backends lists (built from the settings by
    qtask.execution.catalog)."""

    @property
    def default(self) -> str:
        """The name of the backend a submission that names none runs on."""
        ...

    def get(self, name: str | None) -> ExecutionBackend:
        """The backend called `name` (the default for None); UnknownBackendError otherwise."""
        ...

    def admit(self, name: str | None, info: CircuitInfo, shots: int) -> str:
        """Check the circuit against the backend's limits (BackendLimitError, 422); return the
        backend's name."""
        ...

    def all(self) -> list[ExecutionBackend]:
        """Every backend, the default first."""
        ...
