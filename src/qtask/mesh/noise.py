"""A node's noise as a real Aer noise model, the one simulation every node runs, and
calibration: the fidelity a node advertises is measured here, never configured.

`simulate(ir, noise, shots, seed)` is what a node runs for EXECUTE (in a child process, see
`child_handle`), and what a test runs to prove counts came from that node: same IR, noise,
shots and seed give exactly the same counts (Aer seeded, one thread per run, so the node's
`capacity` runs in parallel neither oversubscribe the cores nor change the random streams).

Calibration runs Bell and GHZ-3 under the node's noise and compares their counts with the ideal
distributions (Hellinger fidelity); the node's fidelity is the mean of the two.

The noise model: a depolarizing error after every 1-qubit gate (`depolarizing_1q`) and every
2-qubit gate (`depolarizing_2q`), and a symmetric readout error (`readout`) on every
measurement. Gates on 3 qubits (ccx, cswap) carry no error of their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from qiskit.circuit import QuantumCircuit
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.quantum_info import hellinger_fidelity
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

from qtask.errors import CircuitError, ExecutionError
from qtask.mesh.ir import circuit_to_ir, ir_to_circuit
from qtask.mesh.node_child import Calibration, ChildReply, ChildRequest
from qtask.mesh.protocol import CircuitIR, NoiseSpec

_STANDARD = get_standard_gate_name_mapping()
_NON_GATES = frozenset({"measure", "reset", "barrier", "delay", "global_phase"})
ALL_GATES = tuple(name for name in sorted(_STANDARD) if name not in _NON_GATES)


def noise_model(noise: NoiseSpec, gates: Iterable[str] = ALL_GATES) -> NoiseModel | None:
    """The Aer noise model of `noise` on `gates`; None for an ideal node."""
    if not (noise.depolarizing_1q or noise.depolarizing_2q or noise.readout):
        return None
    one = [g for g in gates if g in _STANDARD and g not in _NON_GATES and _width(g) == 1]
    two = [g for g in gates if g in _STANDARD and g not in _NON_GATES and _width(g) == 2]
    model = NoiseModel()
    if noise.depolarizing_1q and one:
        model.add_all_qubit_quantum_error(depolarizing_error(noise.depolarizing_1q, 1), one)
    if noise.depolarizing_2q and two:
        model.add_all_qubit_quantum_error(depolarizing_error(noise.depolarizing_2q, 2), two)
    if noise.readout:
        r = noise.readout
        model.add_all_qubit_readout_error(ReadoutError([[1 - r, r], [r, 1 - r]]))
    return model


def simulate(ir: CircuitIR, noise: NoiseSpec, shots: int, seed: int | None) -> dict[str, int]:
    """Counts of `ir` on Aer under `noise` (deterministic for a given seed)."""
    if not any(op.name == "measure" for op in ir.instructions):
        raise ExecutionError("The circuit measures nothing, so it has no counts.")
    circuit = ir_to_circuit(ir)
    simulator = AerSimulator(
        noise_model=noise_model(noise), seed_simulator=seed, max_parallel_threads=1
    )
    result = simulator.run(circuit, shots=shots).result()
    if not result.success:
        raise ExecutionError(f"Aer could not run the circuit: {result.status}")
    return {str(key): int(value) for key, value in result.get_counts().items()}


def bell() -> QuantumCircuit:
    """Bell pair, both qubits measured."""
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def ghz3() -> QuantumCircuit:
    """GHZ state on 3 qubits, all measured."""
    circuit = QuantumCircuit(3, 3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.cx(1, 2)
    circuit.measure([0, 1, 2], [0, 1, 2])
    return circuit


def calibrate(noise: NoiseSpec, shots: int, seed: int | None = None) -> Calibration:
    """Run Bell and GHZ-3 under `noise`; Hellinger fidelity against the ideal distributions."""
    bell_counts = simulate(circuit_to_ir(bell()), noise, shots, seed)
    ghz_counts = simulate(circuit_to_ir(ghz3()), noise, shots, seed)
    f_bell = float(hellinger_fidelity(bell_counts, {"00": 0.5, "11": 0.5}))
    f_ghz = float(hellinger_fidelity(ghz_counts, {"000": 0.5, "111": 0.5}))
    return Calibration(
        fidelity=round((f_bell + f_ghz) / 2, 6),
        measured_at=time.time(),
        bell=f_bell,
        ghz3=f_ghz,
    )


def _width(name: str) -> int:
    return int(_STANDARD[name].num_qubits)


# -- the node's child processes (qtask.runtime.pool) -------------------------------------------
# Aer holds the GIL for a whole run (measured: a 1.1 s run let another thread tick once), so a
# node runs fragments and calibrations in child processes, never in its own threads: there they
# would freeze the libp2p thread (no pings, no gossip) and the asyncio loop (no SIGTERM).


def child_handle(request: ChildRequest) -> ChildReply:
    """A node's child: ("simulate", (ir, noise, shots, seed)), ("calibrate", (noise, shots))
    or ("slice", (ir, noise, shots, seed, input_state, return_state)) (qtask.mesh.handoff).

    Replies ("ok", (counts, run seconds) | Calibration | (counts, state, run seconds)), or
    ("circuit_error", message) or ("execution_error", message).
    """
    kind, args = request
    try:
        if kind == "slice":
            from qtask.mesh.handoff import child_run_slice  # imports noise: not at the top

            return "ok", child_run_slice(*args)
        if kind == "simulate":
            started = time.perf_counter()
            counts = simulate(*args)
            return "ok", (counts, time.perf_counter() - started)
        if kind == "calibrate":
            return "ok", calibrate(*args)
    except CircuitError as exc:
        return "circuit_error", str(exc)
    except ExecutionError as exc:
        return "execution_error", str(exc)
    raise ValueError(f"unknown request {kind!r}")


def child_warm_up() -> None:
    """Load Aer's native code before the first fragment (a tiny noisy run)."""
    simulate(circuit_to_ir(bell()), NoiseSpec(readout=0.01), 1, 1)
