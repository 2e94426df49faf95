"""Which Aer simulation method runs a circuit, decided from what ingestion learned about it.

Pure and free of Qiskit, so the API (admission), the worker's children (the run) and unit tests
share one rule. Aer's own `method="automatic"` is not used: for a 40-qubit circuit with a
non-Clifford gate it picks statevector and fails with "Insufficient memory" instead of falling
back to matrix product state, which ran the same circuit in 0.2 s (FACTS.md).
"""

from __future__ import annotations

import enum


class Method(enum.StrEnum):
    """Aer's simulation methods that qtask chooses between (Aer's own names)."""

    STABILIZER = "stabilizer"
    STATEVECTOR = "statevector"
    MATRIX_PRODUCT_STATE = "matrix_product_state"


def statevector_bytes(num_qubits: int) -> int:
    """Memory of an n-qubit statevector: 2^n complex doubles of 16 bytes each."""
    return 16 << num_qubits


def choose_method(num_qubits: int, clifford: bool, max_statevector_bytes: int) -> Method:
    """Stabilizer for Clifford circuits (polynomial memory); statevector when it fits the
    limit; otherwise matrix product state, whose memory depends on the entanglement the circuit
    builds (its bond dimension), which only running shows."""
    if clifford:
        return Method.STABILIZER
    if statevector_bytes(num_qubits) <= max_statevector_bytes:
        return Method.STATEVECTOR
    return Method.MATRIX_PRODUCT_STATE


class Device(enum.StrEnum):
    """Where statevector circuits run; `worker.aer_device`."""

    AUTO = "auto"
    CPU = "CPU"
    GPU = "GPU"


def resolve_device(setting: str, available: tuple[str, ...] | list[str]) -> str:
    """The device statevector runs use, given the setting and Aer's `available_devices()`.

    Raises ValueError for a GPU that is asked for but absent, so a worker started on the wrong
    machine (or with the CPU-only `qiskit-aer`) says so instead of running everything on CPU.
    """
    wanted = Device(setting)
    if wanted is Device.CPU:
        return Device.CPU.value
    if Device.GPU.value in available:
        return Device.GPU.value
    if wanted is Device.GPU:
        raise ValueError(
            "worker.aer_device is GPU but Aer reports only "
            f"{', '.join(available) or 'no devices'}; install qiskit-aer-gpu in place of "
            "qiskit-aer (see the README) or set worker.aer_device to auto or CPU"
        )
    return Device.CPU.value
