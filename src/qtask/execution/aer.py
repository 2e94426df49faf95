"""Run circuits on Qiskit Aer inside a worker child process.

One simulator and, when first needed, one transpiler pass manager are built per process and
reused: building them costs ~70 ms, 50 times the simulation of a Bell circuit. Circuits that Aer
runs as they are skip transpilation. Unseeded circuits with the same shot count run together in
one Aer call; seeded ones run one per call so their counts do not depend on their neighbours.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from typing import Any

from qiskit.circuit import QuantumCircuit
from qiskit.transpiler import PassManager

from qtask.circuits.ingest import load_program
from qtask.constants import FAULT_CRASH_MARKER_ENV
from qtask.execution.items import RunItem, RunOutcome

_simulator: Any = None
_pass_manager: PassManager | None = None


def init_process(threads: int, max_memory_mb: int) -> None:
    """Build this process's simulator (called once when a child starts)."""
    global _simulator
    from qiskit_aer import AerSimulator

    _simulator = AerSimulator(
        max_parallel_threads=threads,
        max_parallel_experiments=threads,
        max_memory_mb=max_memory_mb,
    )
    # A first tiny run loads Aer's native code, so the first task does not pay for it.
    probe = QuantumCircuit(1, 1)
    probe.measure(0, 0)
    _simulator.run(probe, shots=1).result()


def run_items(items: list[RunItem]) -> list[RunOutcome]:
    """Run every item; a failure of one item is reported on that item alone."""
    outcomes: dict[str, RunOutcome] = {}
    groups: dict[int, list[tuple[RunItem, QuantumCircuit]]] = defaultdict(list)
    for item in items:
        try:
            circuit = _prepare(item)
        except Exception as exc:  # a circuit that cannot be rebuilt fails alone
            outcomes[item.task_id] = RunOutcome(item.task_id, error=f"Cannot prepare: {exc}")
            continue
        if item.seed is None:
            groups[item.shots].append((item, circuit))
        else:
            outcomes[item.task_id] = _run_group([(item, circuit)], item.shots, item.seed)[0]
    for shots, group in groups.items():
        for outcome in _run_group(group, shots, None):
            outcomes[outcome.task_id] = outcome
    return [outcomes[item.task_id] for item in items]


def _prepare(item: RunItem) -> QuantumCircuit:
    marker = os.environ.get(FAULT_CRASH_MARKER_ENV)
    if marker and marker in item.source:  # fault injection for tests: die like a segfault would
        os.kill(os.getpid(), signal.SIGKILL)
    circuit = load_program(item.encoding, item.source, item.program)
    if not item.measured:
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
    if item.needs_transpile:
        circuit = _transpiler().run(circuit)
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


def _run_group(
    group: list[tuple[RunItem, QuantumCircuit]], shots: int, seed: int | None
) -> list[RunOutcome]:
    started = time.perf_counter()
    options: dict[str, Any] = {"shots": shots}
    if seed is not None:
        options["seed_simulator"] = seed
    try:
        result = _simulator.run([circuit for _, circuit in group], **options).result()
    except Exception as exc:
        if len(group) > 1:  # find the culprit: run each alone
            return [o for pair in group for o in _run_group([pair], shots, seed)]
        return [RunOutcome(group[0][0].task_id, error=f"The simulator failed: {exc}")]
    elapsed = (time.perf_counter() - started) / len(group)
    outcomes = []
    for index, (item, _) in enumerate(group):
        experiment = result.results[index]
        if not experiment.success:
            status = getattr(experiment, "status", "") or "unknown error"
            outcomes.append(RunOutcome(item.task_id, error=f"The simulator failed: {status}"))
            continue
        counts = {str(key): int(value) for key, value in result.get_counts(index).items()}
        outcomes.append(RunOutcome(item.task_id, counts=counts, seconds=elapsed))
    return outcomes
