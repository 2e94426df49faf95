"""Run circuits on Qiskit Aer inside a worker child process.

One simulator and, when first needed, one transpiler pass manager are built per process and
reused: building them costs ~70 ms, 50 times the simulation of a Bell circuit. Circuits that Aer
runs as they are skip transpilation. Each circuit gets its method from execution.methods
(stabilizer, statevector or matrix product state); unseeded circuits with the same shot count
and method run together in one Aer call (those asking for per-shot memory apart from those that
do not, which Aer decides per call); seeded ones run one per call so their counts do not
depend on their neighbours. Statevector runs go to the GPU when the worker has one.

Aer bounds the statevector's memory itself (`max_memory_mb`: it answers "Insufficient memory"),
but not the matrix product state's, which grows with the entanglement a circuit builds: while
such a run lasts a watcher process reads this process's resident memory and ends it with
OUT_OF_MEMORY_SIGNAL past the same budget, before the kernel's OOM killer picks a victim.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from qiskit.circuit import QuantumCircuit
from qiskit.transpiler import PassManager

from qtask.circuits.ingest import load_program
from qtask.circuits.shape import operation_names, without_idle_qubits
from qtask.constants import FAULT_CRASH_MARKER_ENV, OUT_OF_MEMORY_SIGNAL
from qtask.execution.items import RunItem, RunOutcome
from qtask.execution.methods import Method, choose_method, resolve_device

# How often the watchdog reads the resident memory of a matrix product state run; a run's
# memory grows with each gate, so 50 ms overshoots the budget by little.
_WATCH_INTERVAL_S = 0.05

_simulator: Any = None
_pass_manager: PassManager | None = None
# For circuits that use gates the matrix product state method lacks (crx, cry, crz, ccz, cu3,
# ...: Aer answers "invalid instructions"), built when first needed.
_mps_pass_manager: PassManager | None = None
_mps_operations: frozenset[str] = frozenset()
_max_statevector_bytes = 0
_memory_budget_bytes = 0
_statevector_device = "CPU"
# Aer's `run` hands every call to a new job thread and waits for it; its job function, called
# here on this thread, does the same work without the thread (0.07 ms of CPU and ~0.1-0.2 ms of
# wall time per call on Bell, measured: a tenth of a trickling task's run). Only when the
# private function has the signature this module knows (qiskit-aer 0.17-0.18); else `run`.
_execute_directly = False
_JOB_PARAMETERS = ["circuits", "parameter_binds", "run_options", "job_id", "format_result"]


def init_process(threads: int, max_statevector_mb: int, device: str = "auto") -> None:
    """Build this process's simulator (called once when a child starts)."""
    global _simulator, _max_statevector_bytes, _memory_budget_bytes, _statevector_device
    from qiskit_aer import AerSimulator

    # Aer refuses runs that need more than this; twice the statevector leaves room for the
    # simulator's working copies.
    budget_mb = 2 * max_statevector_mb
    _simulator = AerSimulator(
        max_parallel_threads=threads,
        max_parallel_experiments=threads,
        max_memory_mb=budget_mb,
    )
    _statevector_device = resolve_device(device, tuple(_simulator.available_devices()))
    _max_statevector_bytes = max_statevector_mb << 20
    _memory_budget_bytes = budget_mb << 20
    _use_job_function(_simulator)
    # The memory watcher's signal must end the process: its default action, whatever was set.
    signal.signal(OUT_OF_MEMORY_SIGNAL, signal.SIG_DFL)
    # If memory runs out anyway, the kernel should kill a simulation, not the worker.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
    # A first tiny run loads Aer's native code, so the first task does not pay for it.
    probe = QuantumCircuit(1, 1)
    probe.measure(0, 0)
    _execute([probe], {"shots": 1})


def _use_job_function(simulator: Any) -> None:
    """Call Aer's job function directly when it is the one this module knows."""
    global _execute_directly
    job = getattr(simulator, "_execute_circuits_job", None)
    try:
        parameters = list(inspect.signature(job).parameters) if callable(job) else []
    except (TypeError, ValueError):
        parameters = []
    _execute_directly = parameters == _JOB_PARAMETERS


def _execute(circuits: list[QuantumCircuit], options: dict[str, Any]) -> Any:
    """Aer's Result for `circuits` run with `options`, on this thread when possible."""
    if _execute_directly:
        return _simulator._execute_circuits_job(circuits, None, dict(options), "")
    return _simulator.run(circuits, **options).result()


def run_items(items: list[RunItem]) -> list[RunOutcome]:
    """Run every item; a failure of one item is reported on that item alone."""
    outcomes: dict[str, RunOutcome] = {}
    groups: dict[tuple[int, Method, bool], list[tuple[RunItem, QuantumCircuit]]] = defaultdict(list)
    for item in items:
        method = choose_method(item.num_qubits, item.clifford, _max_statevector_bytes)
        try:
            circuit = _prepare(item, method)
        except Exception as exc:  # a circuit that cannot be rebuilt fails alone
            outcomes[item.task_id] = RunOutcome(item.task_id, error=f"Cannot prepare: {exc}")
            continue
        if item.seed is None:
            groups[(item.shots, method, item.memory)].append((item, circuit))
        else:
            [outcome] = _run_group([(item, circuit)], item.shots, item.seed, method, item.memory)
            outcomes[item.task_id] = outcome
    for (shots, method, memory), group in groups.items():
        for outcome in _run_group(group, shots, None, method, memory):
            outcomes[outcome.task_id] = outcome
    return [outcomes[item.task_id] for item in items]


def _prepare(item: RunItem, method: Method) -> QuantumCircuit:
    circuit = load_circuit(item)
    if method is Method.MATRIX_PRODUCT_STATE:
        pass_manager, supported = _mps_transpiler()
        if not operation_names(circuit) <= supported:
            return pass_manager.run(circuit)
    if item.needs_transpile:
        circuit = _transpiler().run(circuit)
    return circuit


def load_circuit(item: RunItem) -> QuantumCircuit:
    """The item's circuit, less its idle qubits, measuring every qubit when it measures nothing
    (any backend)."""
    marker = os.environ.get(FAULT_CRASH_MARKER_ENV)
    if marker and marker in item.source:  # fault injection for tests: die like a segfault would
        os.kill(os.getpid(), signal.SIGKILL)
    circuit = load_program(item.encoding, item.source, item.program)
    if item.measured:
        # Admission counted the qubits the circuit uses (a circuit transpiled for a 127-qubit
        # device uses a few): the run simulates those alone, with the same classical bits.
        circuit = without_idle_qubits(circuit)
    else:
        if circuit.num_clbits and not any(instruction.clbits for instruction in circuit.data):
            # Bits declared but never written would show up as constant zeros in every key;
            # without them the keys are just the measured qubits.
            bare = QuantumCircuit(*circuit.qregs, name=circuit.name)
            if not circuit.qregs:
                bare.add_bits(circuit.qubits)
            for instruction in circuit.data:
                bare.append(instruction.operation, instruction.qubits)
            circuit = bare
        circuit.measure_all()
    return circuit


def _transpiler() -> PassManager:
    global _pass_manager
    if _pass_manager is None:
        from qiskit.circuit.library import get_standard_gate_name_mapping
        from qiskit.transpiler import generate_preset_pass_manager

        # Aer's own operations that the transpiler knows by name. A pass manager for a basis,
        # unlike one for AerSimulator's target, has no 30-qubit limit.
        standard = get_standard_gate_name_mapping()
        basis = sorted(name for name in _simulator.target.operation_names if name in standard)
        _pass_manager = generate_preset_pass_manager(optimization_level=0, basis_gates=basis)
    return _pass_manager


def _mps_transpiler() -> tuple[PassManager, frozenset[str]]:
    global _mps_pass_manager, _mps_operations
    if _mps_pass_manager is None:
        from qiskit.circuit.library import get_standard_gate_name_mapping
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_aer import AerSimulator

        names = AerSimulator(method=Method.MATRIX_PRODUCT_STATE.value).target.operation_names
        standard = get_standard_gate_name_mapping()
        basis = sorted(name for name in names if name in standard)
        _mps_pass_manager = generate_preset_pass_manager(optimization_level=0, basis_gates=basis)
        _mps_operations = frozenset(names) | {"barrier"}
    return _mps_pass_manager, _mps_operations


def _run_group(
    group: list[tuple[RunItem, QuantumCircuit]],
    shots: int,
    seed: int | None,
    method: Method,
    memory: bool = False,
) -> list[RunOutcome]:
    started = time.perf_counter()
    options: dict[str, Any] = {"shots": shots, "method": method.value}
    if memory:
        options["memory"] = True
    if method is Method.STATEVECTOR:
        options["device"] = _statevector_device
    if seed is not None:
        options["seed_simulator"] = seed
    watch = _memory_watch() if method is Method.MATRIX_PRODUCT_STATE else contextlib.nullcontext()
    try:
        with watch:
            result = _execute([circuit for _, circuit in group], options)
    except Exception as exc:
        if len(group) > 1:  # find the culprit: run each alone
            return [o for pair in group for o in _run_group([pair], shots, seed, method, memory)]
        error = f"The simulator failed: {exc}"
        return [RunOutcome(group[0][0].task_id, error=error, method=method.value)]
    elapsed = (time.perf_counter() - started) / len(group)
    outcomes = []
    for index, (item, _) in enumerate(group):
        # `result()` does not raise when a run fails: success is per experiment.
        experiment = result.results[index] if index < len(result.results) else None
        if experiment is None or not experiment.success:
            status = getattr(experiment, "status", "") or getattr(result, "status", "")
            error = _failure_message(str(status) or "unknown error")
            outcomes.append(RunOutcome(item.task_id, error=error, method=method.value))
            continue
        counts = {str(key): int(value) for key, value in result.get_counts(index).items()}
        # get_memory formats each shot as get_counts formats its keys (registers spaced).
        shots_seen = [str(bits) for bits in result.get_memory(index)] if memory else None
        outcomes.append(
            RunOutcome(
                item.task_id,
                counts=counts,
                seconds=elapsed,
                method=method.value,
                memory=shots_seen,
            )
        )
    return outcomes


def _failure_message(status: str) -> str:
    if "Insufficient memory" in status:
        return f"The circuit needs more memory than this worker allows: {status}"
    return f"The simulator failed: {status}"


@contextlib.contextmanager
def _memory_watch() -> Iterator[None]:
    """Have a watcher end this process with OUT_OF_MEMORY_SIGNAL if its resident memory grows
    past the budget during the block.

    Aer holds the GIL while it simulates (measured: no Python thread runs meanwhile), so the
    watcher is a separate process: a shell loop costs ~2 ms to start, a Python one ~20 ms.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except OSError:  # not Linux: the kernel's OOM killer remains the bound
        yield
        return
    # The budget is for the simulation: what the process held before it does not count.
    limit_pages = resident_pages + _memory_budget_bytes // os.sysconf("SC_PAGE_SIZE")
    arguments = [str(os.getpid()), str(limit_pages), str(int(OUT_OF_MEMORY_SIGNAL))]
    watcher = subprocess.Popen(
        ["/bin/sh", "-c", _WATCHER, "qtask-aer-watch", *arguments], stdin=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        watcher.kill()
        watcher.wait()


# $1: the process to watch, $2: its resident-memory limit in pages, $3: the signal to send.
_WATCHER = f"""
while kill -0 "$1" 2>/dev/null; do
  read -r _ rss _ < "/proc/$1/statm" || exit 0
  if [ "$rss" -gt "$2" ]; then kill -s "$3" "$1"; exit 0; fi
  sleep {_WATCH_INTERVAL_S}
done
"""
