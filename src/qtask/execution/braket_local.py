"""The `braket_local` backend's runs, in a worker's child process: Amazon Braket's local
state-vector simulator (`braket.devices.LocalSimulator("braket_sv")`), one circuit per call.

The circuit is loaded as for Aer (execution.aer.load_circuit, so one that measures nothing
measures every qubit), rewritten into Braket's gates (execution.braket_circuits) and its counts
keyed as Aer keys them. Braket's simulator takes no seed, so a task's seed does not make its
counts repeatable here (capabilities say seeds=False). The SDK is imported on the first task that
names this backend, in the child's main thread, so workers that never meet one never load it.
"""

from __future__ import annotations

import time
from typing import Any

from qtask.execution.items import RunItem, RunOutcome

# The Braket SDK's name for its local state-vector simulator.
SIMULATOR = "braket_sv"
# braket_sv's own qubit limit (its properties' paradigm.qubitCount, SDK 1.127).
MAX_QUBITS = 26

_simulator: Any = None


def _device() -> Any:
    global _simulator
    if _simulator is None:
        from braket.devices import LocalSimulator

        _simulator = LocalSimulator(SIMULATOR)
    return _simulator


def run_items(items: list[RunItem]) -> list[RunOutcome]:
    """Run every item on Braket's local simulator; a failure of one is reported on it alone."""
    return [_run(item) for item in items]


def _run(item: RunItem) -> RunOutcome:
    from qtask.execution.aer import load_circuit
    from qtask.execution.braket_circuits import counts_like_aer, shots_like_aer, to_braket

    started = time.perf_counter()
    try:
        prepared = to_braket(load_circuit(item))
    except Exception as exc:  # a circuit Braket cannot take fails alone
        return RunOutcome(item.task_id, error=f"Cannot run on Amazon Braket: {exc}")
    try:
        result = _device().run(prepared.circuit, shots=item.shots).result()
    except Exception as exc:  # the simulator's own refusal (qubits, memory)
        return RunOutcome(item.task_id, error=f"Braket's local simulator failed: {exc}")
    shots = shots_like_aer(prepared.readback, result.measured_qubits, result.measurements)
    return RunOutcome(
        item.task_id,
        counts=counts_like_aer(shots),
        seconds=time.perf_counter() - started,
        method=SIMULATOR,
        memory=shots if item.memory else None,
    )
