"""The Aer method chosen per circuit, and the device statevector runs use (pure rules)."""

from __future__ import annotations

import pytest

from qtask.execution.aer import _failure_message
from qtask.execution.methods import Method, choose_method, resolve_device, statevector_bytes

MIB = 1 << 20


def test_clifford_circuits_use_the_stabilizer_whatever_their_width() -> None:
    assert choose_method(2, True, 4096 * MIB) is Method.STABILIZER
    assert choose_method(100, True, 4096 * MIB) is Method.STABILIZER


def test_non_clifford_circuit_uses_statevector_while_it_fits() -> None:
    # 4096 MiB holds a 28-qubit statevector (2^28 * 16 bytes) and no more.
    assert statevector_bytes(28) == 4096 * MIB
    assert choose_method(28, False, 4096 * MIB) is Method.STATEVECTOR
    assert choose_method(1, False, 4096 * MIB) is Method.STATEVECTOR


def test_non_clifford_circuit_too_wide_for_a_statevector_uses_mps() -> None:
    assert choose_method(29, False, 4096 * MIB) is Method.MATRIX_PRODUCT_STATE
    assert choose_method(40, False, 4096 * MIB) is Method.MATRIX_PRODUCT_STATE
    assert choose_method(11, False, 16 << 10) is Method.MATRIX_PRODUCT_STATE
    assert choose_method(10, False, 16 << 10) is Method.STATEVECTOR


def test_method_values_are_aers_own_names() -> None:
    assert [m.value for m in Method] == ["stabilizer", "statevector", "matrix_product_state"]


def test_auto_device_takes_the_gpu_when_aer_reports_one() -> None:
    assert resolve_device("auto", ("CPU", "GPU")) == "GPU"
    assert resolve_device("auto", ("CPU",)) == "CPU"


def test_cpu_device_ignores_a_gpu() -> None:
    assert resolve_device("CPU", ("CPU", "GPU")) == "CPU"


def test_gpu_device_without_a_gpu_refuses_naming_the_setting() -> None:
    assert resolve_device("GPU", ("CPU", "GPU")) == "GPU"
    with pytest.raises(ValueError, match=r"worker\.aer_device is GPU but Aer reports only CPU"):
        resolve_device("GPU", ("CPU",))


def test_aer_insufficient_memory_becomes_a_memory_error() -> None:
    status = "ERROR: Insufficient memory to run circuit circuit-46 using the statevector simulator."
    assert _failure_message(status) == (
        f"The circuit needs more memory than this worker allows: {status}"
    )
    assert _failure_message("ERROR: invalid instructions") == (
        "The simulator failed: ERROR: invalid instructions"
    )
