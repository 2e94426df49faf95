"""A node's NoiseSpec is a real Aer noise model; calibration measures the fidelity it adverts."""

from __future__ import annotations

import pytest

from qtask.errors import ExecutionError
from qtask.mesh.ir import circuit_to_ir
from qtask.mesh.noise import bell, calibrate, ghz3, noise_model, simulate
from qtask.mesh.protocol import CircuitIR, Instruction, NoiseSpec

NOISY = NoiseSpec(depolarizing_1q=0.02, depolarizing_2q=0.1, readout=0.05)


def test_noise_spec_becomes_depolarizing_and_readout_errors() -> None:
    model = noise_model(NOISY, ["h", "x", "cx", "cz", "ccx", "measure"])
    assert model is not None
    assert set(model.noise_instructions) >= {"h", "x", "cx", "cz", "measure"}
    assert "ccx" not in model.noise_instructions
    assert noise_model(NoiseSpec()) is None


def test_same_seed_gives_exactly_the_same_counts_and_another_seed_does_not() -> None:
    ir = circuit_to_ir(ghz3())
    first = simulate(ir, NOISY, 4000, seed=11)
    assert simulate(ir, NOISY, 4000, seed=11) == first
    assert simulate(ir, NOISY, 4000, seed=12) != first
    assert sum(first.values()) == 4000


def test_noise_shows_in_the_counts() -> None:
    ir = circuit_to_ir(bell())
    assert set(simulate(ir, NoiseSpec(), 2000, seed=1)) == {"00", "11"}
    assert set(simulate(ir, NOISY, 2000, seed=1)) == {"00", "01", "10", "11"}


def test_calibration_fidelity_falls_with_the_noise() -> None:
    ideal = calibrate(NoiseSpec(), shots=4000, seed=3)
    mild = calibrate(NoiseSpec(depolarizing_2q=0.02), shots=4000, seed=3)
    noisy = calibrate(NOISY, shots=4000, seed=3)
    assert ideal.fidelity > 0.995
    assert ideal.fidelity > mild.fidelity > noisy.fidelity
    assert noisy.fidelity == pytest.approx((noisy.bell + noisy.ghz3) / 2, abs=1e-6)
    assert noisy.fidelity < 0.9


def test_circuit_without_measurements_has_no_counts() -> None:
    ir = CircuitIR(num_qubits=1, num_clbits=0, instructions=(Instruction(name="h", qubits=(0,)),))
    with pytest.raises(ExecutionError, match="measures nothing"):
        simulate(ir, NoiseSpec(), 10, seed=1)
