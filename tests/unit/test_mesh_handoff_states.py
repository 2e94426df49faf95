"""State hand-off math: slices run on a given state, parallel groups joined in the right qubit
order, states through the wire form, counts of independent groups combined."""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import DensityMatrix, Statevector

from qtask.mesh.handoff import combine_counts, decode_state, encode_state, join, run_slice
from qtask.mesh.ir import circuit_to_ir
from qtask.mesh.protocol import NoiseSpec


def _state(qc: QuantumCircuit) -> np.ndarray:
    _, state = run_slice(circuit_to_ir(qc), NoiseSpec(), 1, 1, None, True)
    assert state is not None
    return state


def test_joined_groups_equal_the_whole_circuits_state_whatever_the_qubit_order() -> None:
    a = QuantumCircuit(2)  # job qubits (3, 0)
    a.ry(0.3, 0)
    a.cx(0, 1)
    b = QuantumCircuit(2)  # job qubits (1, 2)
    b.h(0)
    b.rx(1.1, 1)
    whole = QuantumCircuit(4)
    whole.ry(0.3, 3)
    whole.cx(3, 0)
    whole.h(1)
    whole.rx(1.1, 2)
    joined = join([((3, 0), _state(a)), ((1, 2), _state(b))], (0, 1, 2, 3))
    assert np.allclose(joined, Statevector(whole).data)
    # Another target order is the same state with its qubits renumbered.
    permuted = join([((3, 0), _state(a)), ((1, 2), _state(b))], (2, 0, 3, 1))
    renumbered = QuantumCircuit(4)
    renumbered.ry(0.3, 2)
    renumbered.cx(2, 1)
    renumbered.h(3)
    renumbered.rx(1.1, 0)
    assert np.allclose(permuted, Statevector(renumbered).data)


def test_a_noisy_group_makes_the_join_a_density_matrix_and_uncovered_qubits_start_at_zero() -> None:
    a = QuantumCircuit(1)
    a.h(0)
    _, noisy = run_slice(circuit_to_ir(a), NoiseSpec(depolarizing_1q=0.2), 1, 1, None, True)
    assert noisy is not None
    assert noisy.shape == (2, 2)
    joined = join([((1,), noisy)], (0, 1))
    expected = np.kron(noisy, np.diag([1, 0]))  # qubit 1 (high) noisy, qubit 0 at |0>
    assert np.allclose(joined, expected)
    assert np.isclose(np.trace(joined), 1)


def test_overlapping_or_foreign_groups_are_refused() -> None:
    one = np.array([1, 0], dtype=complex)
    with pytest.raises(ValueError, match="overlap"):
        join([((0,), one), ((0,), one)], (0, 1))
    with pytest.raises(ValueError, match="does not take"):
        join([((5,), one)], (0, 1))


def test_a_slice_on_a_handed_state_samples_what_the_whole_circuit_would() -> None:
    first = QuantumCircuit(2)
    first.h(0)
    second = QuantumCircuit(2, 2)
    second.cx(0, 1)
    second.measure([0, 1], [0, 1])
    counts, _ = run_slice(circuit_to_ir(second), NoiseSpec(), 2000, 3, _state(first), False)
    assert counts is not None
    assert set(counts) == {"00", "11"}
    noisy = NoiseSpec(depolarizing_2q=0.2)
    dm_counts, _ = run_slice(circuit_to_ir(second), noisy, 2000, 3, _state(first), False)
    assert dm_counts is not None
    assert {"01", "10"} & set(dm_counts)  # the noise shows in the sampled counts


def test_states_survive_the_wire_form_and_bad_ones_are_refused() -> None:
    rho = DensityMatrix.from_label("+0").data
    assert np.allclose(decode_state(encode_state(rho), 2), rho)
    with pytest.raises(ValueError, match="the slice 3"):
        decode_state(encode_state(rho), 3)
    with pytest.raises(ValueError, match="power of two"):
        decode_state(encode_state(np.ones(3, dtype=complex)))
    with pytest.raises(ValueError, match="base64"):
        decode_state("not base64!")


def test_counts_of_independent_groups_combine_into_their_product() -> None:
    low = {"01": 500, "00": 500}  # clbit 0 random, clbit 1 zero
    high = {"10": 1000}  # clbit 1 set
    combined = combine_counts([(low, (0,)), (high, (1,))], 2, seed=1)
    assert combined == {"10": 500, "11": 500}
    assert combine_counts([(low, (0, 1))], 2, seed=1) == low
