"""qtask as a Qiskit backend: `QTaskProvider(url).get_backend()` gives a `BackendV2` whose
`run(circuits, shots=, seed_simulator=, memory=)` submits the circuits as one batch and returns a
job whose `result()` is a Qiskit `Result`, so existing code (and `BackendSamplerV2`) runs on
qtask unchanged:

    from qtask.client.qiskit import QTaskProvider
    backend = QTaskProvider("http://127.0.0.1:8000").get_backend()
    counts = backend.run(bell, shots=1000).result().get_counts()

This is the one module of qtask.client that needs Qiskit (`pip install "qtask[qiskit]"`); the
rest of the client never imports it. Circuits go as OpenQASM (qtask.client.circuits: OpenQASM 2
where it can, which the server parses on its fast path). Counts and per-shot memory come back as
qtask gives them, bitstrings keyed as Qiskit's get_counts() keys them (registers separated by
spaces); they are put into the Result as Qiskit's backends do (hexadecimal, with the registers
in the header), so `get_counts()`, `get_memory()` and the primitives format them themselves.

The target comes from the server's `GET /backends` when it has one; without it, a generous
default: the standard gates (the server transpiles what Aer cannot run), no coupling map, and
DEFAULT_NUM_QUBITS qubits.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qiskit.circuit import QuantumCircuit, Qubit
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.converters import circuit_to_dag, dag_to_circuit
from qiskit.providers import BackendV2, JobStatus, JobV1, Options
from qiskit.providers.exceptions import QiskitBackendNotFoundError
from qiskit.result import Result
from qiskit.result.models import ExperimentResult, ExperimentResultData
from qiskit.transpiler import CouplingMap, Target

from qtask.client.errors import ConflictError, UnsupportedError
from qtask.client.models import TaskResult
from qtask.client.sync import Client

__all__ = ["QTaskBackend", "QTaskJob", "QTaskProvider"]

# Without GET /backends: the server's default limits.max_qubits.
DEFAULT_NUM_QUBITS = 100
# Circuits per run() call (one POST /tasks/batch; the server's default limits.max_batch_tasks).
MAX_CIRCUITS = 1000
# The message of a cancelled task (qtask.constants.MSG_CANCELLED; not imported: server side).
_CANCELLED = "Task was cancelled."
# Gates that are not operations a circuit sends: left out of the default target.
_NOT_OPERATIONS = frozenset({"global_phase", "delay"})


@dataclass(frozen=True, slots=True)
class _Backend:
    """One entry of GET /backends, reduced to what the target and run() need."""

    name: str
    num_qubits: int
    basis_gates: list[str] | None = None
    coupling_map: list[tuple[int, int]] | None = None
    # Whether the server has GET /backends, so that `backend=` can be sent.
    named: bool = False


class QTaskProvider:
    """The backends of one qtask server. `url` and `api_key` default to QTASK_URL and
    QTASK_API_KEY, as qtask.client.Client's do."""

    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        self._client = Client(url, api_key=api_key)

    @property
    def client(self) -> Client:
        """The qtask client the backends submit through."""
        return self._client

    def backends(self, name: str | None = None) -> list[QTaskBackend]:
        """The server's backends (only the one called `name` when given)."""
        found = [QTaskBackend(self, entry) for entry in self._describe()]
        return [b for b in found if name is None or b.name == name]

    def get_backend(self, name: str | None = None) -> QTaskBackend:
        """The backend called `name`, or the server's default one."""
        entries = self._describe()
        if name is None:
            return QTaskBackend(self, entries[0])
        for entry in entries:
            if entry.name == name:
                return QTaskBackend(self, entry)
        known = ", ".join(entry.name for entry in entries)
        raise QiskitBackendNotFoundError(f"qtask has no backend {name!r}; it has: {known}")

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _describe(self) -> list[_Backend]:
        """GET /backends, default first; one default entry when the server has no such route."""
        try:
            found = self._client.backends()
        except UnsupportedError:
            return [_Backend("aer", DEFAULT_NUM_QUBITS)]
        entries = [
            _Backend(
                name=backend.name,
                num_qubits=backend.num_qubits or DEFAULT_NUM_QUBITS,
                basis_gates=backend.basis_gates,
                coupling_map=backend.coupling_map,
                named=True,
            )
            for backend in found
        ]
        return entries or [_Backend("aer", DEFAULT_NUM_QUBITS)]


class QTaskBackend(BackendV2):  # type: ignore[misc]  # qiskit has no type hints
    """One qtask backend as a Qiskit BackendV2; run() submits, the job waits and reads."""

    def __init__(self, provider: QTaskProvider, entry: _Backend) -> None:
        super().__init__(
            provider=provider,
            name=entry.name,
            description=f"qtask at {provider.client.url}: {entry.name}",
            backend_version="1",
        )
        self._entry = entry
        self._target = _target(entry)

    @property
    def target(self) -> Target:
        """Gates and qubits from GET /backends (or the default, see the module docstring)."""
        return self._target

    @property
    def max_circuits(self) -> int:
        """Circuits one run() may take (one batch submission)."""
        return MAX_CIRCUITS

    @classmethod
    def _default_options(cls) -> Options:
        return Options(shots=1024, seed_simulator=None, memory=False)

    def run(self, run_input: QuantumCircuit | Sequence[QuantumCircuit], **options: Any) -> QTaskJob:
        """Submit the circuit(s) as one batch; return the job at once (tasks run on the server).

        Options: shots, seed_simulator, memory (each shot's bitstring, read with
        `result().get_memory()`); others are ignored with a warning.
        """
        circuits = [run_input] if isinstance(run_input, QuantumCircuit) else list(run_input)
        if len(circuits) > MAX_CIRCUITS:
            raise ValueError(f"at most {MAX_CIRCUITS} circuits per run; got {len(circuits)}")
        defaults = dict(self.options.items())
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            warnings.warn(
                f"qtask ignores these run options: {', '.join(unknown)}", UserWarning, stacklevel=2
            )
        chosen = {**defaults, **{k: v for k, v in options.items() if k in defaults}}
        shots, seed, memory = chosen["shots"], chosen["seed_simulator"], bool(chosen["memory"])
        client = self._client
        sent = [_without_idle_qubits(c) for c in circuits] if self._entry.coupling_map else circuits
        ids = client.submit_many(
            sent,
            shots=None if shots is None else int(shots),
            seed=None if seed is None else int(seed),
            backend=self.name if self._entry.named else None,
            memory=memory,
        )
        headers = [_header(circuit) for circuit in circuits]
        return QTaskJob(self, ids, headers, int(shots or 1024), memory)

    @property
    def _client(self) -> Client:
        provider = self.provider
        assert isinstance(provider, QTaskProvider)
        return provider.client


class QTaskJob(JobV1):  # type: ignore[misc]
    """The qtask tasks of one run(), one per circuit, as a Qiskit job."""

    def __init__(
        self,
        backend: QTaskBackend,
        task_ids: list[str],
        headers: list[dict[str, Any]],
        shots: int,
        memory: bool,
    ) -> None:
        super().__init__(backend, str(uuid.uuid4()))
        self._task_ids = task_ids
        self._headers = headers
        self._shots = shots
        self._memory = memory
        self._client = backend._client

    @property
    def task_ids(self) -> list[str]:
        """The qtask task of each circuit, in order."""
        return list(self._task_ids)

    def submit(self) -> None:
        """run() has already submitted the tasks."""
        raise RuntimeError("a qtask job is submitted by backend.run()")

    def status(self) -> JobStatus:
        """QUEUED while no task ended, RUNNING while some did, then DONE, CANCELLED (every
        failure a cancellation) or ERROR."""
        return _status(self._client.get_many(self._task_ids))

    def cancel(self) -> bool:
        """Cancel every task that has not ended; True when none is left running."""
        for task_id in self._task_ids:
            try:
                self._client.cancel(task_id)
            except ConflictError:  # it had already ended
                continue
        return True

    def result(self, timeout: float | None = None) -> Result:
        """Wait for every task (up to `timeout` seconds) and return their Result."""
        tasks = self._client.wait(self._task_ids, timeout=timeout)
        experiments = [
            _experiment(task, header, self._shots, self._memory)
            for task, header in zip(tasks, self._headers, strict=True)
        ]
        return Result(
            backend_name=self.backend().name,
            backend_version="1",
            job_id=self.job_id(),
            success=all(experiment.success for experiment in experiments),
            results=experiments,
            status=_status(tasks).name,
        )


def _target(entry: _Backend) -> Target:
    standard = get_standard_gate_name_mapping()
    if entry.basis_gates is None:
        names = [name for name in standard if name not in _NOT_OPERATIONS]
    else:
        names = [name for name in entry.basis_gates if name in standard]
        names += [name for name in ("measure", "reset") if name not in names]
    if entry.coupling_map:
        return Target.from_configuration(
            names, num_qubits=entry.num_qubits, coupling_map=CouplingMap(entry.coupling_map)
        )
    target = Target(description=f"qtask {entry.name}", num_qubits=entry.num_qubits)
    for name in names:
        target.add_instruction(standard[name], name=name)  # on every qubit (and pair, ...)
    return target


def _without_idle_qubits(circuit: QuantumCircuit) -> QuantumCircuit:
    """The circuit less the qubits no instruction touches. A circuit transpiled for a device
    declares every qubit of the device (127 for fake_brisbane), which the server would count
    against its simulation limits; it lays the circuit out on the device again itself, and the
    classical bits (so the result's keys) stay as they are. Left whole without measurements
    (the server then measures every qubit)."""
    if circuit.num_clbits == 0:
        return circuit
    dag = circuit_to_dag(circuit)
    idle = [wire for wire in dag.idle_wires() if isinstance(wire, Qubit)]
    if not idle:
        return circuit
    dag.remove_qubits(*idle)
    return dag_to_circuit(dag)


def _header(circuit: QuantumCircuit) -> dict[str, Any]:
    """What Qiskit's Result needs to format the circuit's keys: its registers and bit count."""
    return {
        "name": circuit.name,
        "creg_sizes": [[register.name, register.size] for register in circuit.cregs],
        "memory_slots": circuit.num_clbits,
        "metadata": circuit.metadata,
    }


def _hex(bits: str) -> str:
    """qtask's key ("10 01", registers spaced) as the hexadecimal Qiskit's results hold."""
    digits = bits.replace(" ", "")
    return hex(int(digits, 2)) if digits else "0x0"


def _experiment(
    task: TaskResult, header: dict[str, Any], shots: int, memory: bool
) -> ExperimentResult:
    if not task.ok or task.counts is None:
        return ExperimentResult(
            shots=shots,
            success=False,
            data=ExperimentResultData(),
            header=header,
            status=task.error or "The task failed.",
        )
    if memory and task.memory is None:
        return ExperimentResult(
            shots=shots,
            success=False,
            data=ExperimentResultData(),
            header=header,
            status="qtask returned no per-shot results (memory) for this task; run it again.",
        )
    counts = task.counts
    first = next(iter(counts), "")
    if len(first.replace(" ", "")) != header["memory_slots"]:
        # The server measured every qubit of a circuit that measured nothing.
        sizes = [len(part) for part in first.split(" ")]
        header = {
            **header,
            "creg_sizes": [[f"meas{i}", size] for i, size in enumerate(reversed(sizes))],
            "memory_slots": sum(sizes),
        }
    data = ExperimentResultData(
        counts={_hex(key): value for key, value in counts.items()},
        memory=[_hex(bits) for bits in task.memory] if memory and task.memory else None,
    )
    return ExperimentResult(
        shots=sum(counts.values()),
        success=True,
        meas_level=2,
        data=data,
        header=header,
        status="DONE",
    )


def _status(tasks: Sequence[TaskResult]) -> JobStatus:
    if not any(task.done for task in tasks):
        return JobStatus.QUEUED
    if not all(task.done for task in tasks):
        return JobStatus.RUNNING
    failed = [task for task in tasks if not task.ok]
    if not failed:
        return JobStatus.DONE
    if all(task.error == _CANCELLED for task in failed):
        return JobStatus.CANCELLED
    return JobStatus.ERROR
