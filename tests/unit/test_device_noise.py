"""A device's noise model built for the qubits a circuit uses (execution.devices.DeviceNoise)
is Aer's own `NoiseModel.from_backend` restricted to them: the same errors on those qubits,
none elsewhere, the same basis gates, and the same seeded counts, delays included; also when
some of its errors were built for an earlier circuit's qubits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import SuperOp
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel

from qtask.execution import devices

USED = frozenset({1, 2, 3})


@pytest.fixture(scope="module")
def manila() -> Any:
    return devices.fake_backend("fake_manila")


@pytest.fixture(scope="module")
def whole(manila: Any) -> NoiseModel:
    return NoiseModel.from_backend(manila)


def channel(error: Any) -> Any:
    return SuperOp(error.to_quantumchannel()).data


@pytest.mark.parametrize("before", [frozenset(), frozenset({0, 1}), frozenset({3, 4})])
def test_the_errors_on_the_used_qubits_are_aers_own_and_there_are_none_elsewhere(
    manila: Any, whole: NoiseModel, before: frozenset[int]
) -> None:
    noise = devices.DeviceNoise(manila)
    if before:
        noise.model(before)  # builds the errors on those qubits first
    cut = noise.model(USED)
    assert cut.basis_gates == whole.basis_gates
    assert cut.noise_instructions == whole.noise_instructions
    assert cut.noise_qubits == sorted(USED)
    expected = {
        (gate, qubits): error
        for gate, errors in whole._local_quantum_errors.items()
        for qubits, error in errors.items()
        if USED.issuperset(qubits)
    }
    got = {
        (gate, qubits): error
        for gate, errors in cut._local_quantum_errors.items()
        for qubits, error in errors.items()
    }
    assert got.keys() == expected.keys()
    assert len(got) > len(USED)  # 1-qubit gates on each, cx on the pairs
    for key, error in expected.items():
        assert np.allclose(channel(got[key]), channel(error), atol=1e-12), key
    assert cut._local_readout_errors == {
        qubits: error for qubits, error in whole._local_readout_errors.items() if qubits[0] in USED
    }


def test_a_seeded_run_with_a_delay_gives_the_counts_of_the_whole_model(
    manila: Any, whole: NoiseModel
) -> None:
    # Already physical (the device's gates and couplings), so no transpiler runs.
    qc = QuantumCircuit(5, 3)
    qc.sx(1)
    qc.cx(1, 2)
    qc.delay(2000, 2, unit="dt")
    qc.cx(2, 3)
    qc.rz(0.3, 3)
    qc.x(1)
    qc.measure([1, 2, 3], [0, 1, 2])
    simulator = AerSimulator.from_backend(manila, noise_model=None)
    cut = devices.DeviceNoise(manila).model(devices.used_qubits(qc))

    def counts(noise: NoiseModel) -> dict[str, int]:
        result = simulator.run(qc, shots=3000, seed_simulator=5, noise_model=noise).result()
        return dict(result.get_counts())

    ideal = dict(simulator.run(qc, shots=3000, seed_simulator=5).result().get_counts())
    assert counts(cut) == counts(whole)
    assert counts(cut) != ideal  # the noise is there
