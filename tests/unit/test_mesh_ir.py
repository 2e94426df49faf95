"""FR-003: QuantumCircuit <-> CircuitIR keeps gate order, qubit mapping, measurements and the
classical registers (so counts read like qtask's); qtask's own ingestion does the parsing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit import qasm2
from qiskit.circuit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit_aer import AerSimulator

from qtask.circuits.ingest import Limits
from qtask.errors import CircuitError
from qtask.mesh.ir import circuit_to_ir, ir_from_qasm, ir_to_circuit
from qtask.mesh.noise import simulate
from qtask.mesh.protocol import CircuitIR, Instruction, NoiseSpec

LIMITS = Limits(
    max_circuit_bytes=1 << 20, max_qubits=30, max_operations=100_000, max_statevector_bytes=1 << 30
)
# name -> (qubits, params)
GATES = {
    "h": (1, 0), "x": (1, 0), "sx": (1, 0), "t": (1, 0), "rx": (1, 1), "rz": (1, 1),
    "u": (1, 3), "p": (1, 1), "cx": (2, 0), "cz": (2, 0), "swap": (2, 0), "cp": (2, 1),
    "rzz": (2, 1), "ccx": (3, 0),
}  # fmt: skip
angles = st.floats(min_value=-2 * math.pi, max_value=2 * math.pi, allow_nan=False)


def shape(circuit: QuantumCircuit) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple]]:
    return [
        (
            item.operation.name,
            tuple(circuit.find_bit(q).index for q in item.qubits),
            tuple(circuit.find_bit(c).index for c in item.clbits),
            tuple(float(p) for p in item.operation.params),
        )
        for item in circuit.data
    ]


@st.composite
def circuits(draw: st.DrawFn) -> QuantumCircuit:
    n = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, 3), max_size=3))
    circuit = QuantumCircuit(
        QuantumRegister(n, "q"), *(ClassicalRegister(s, f"c{i}") for i, s in enumerate(sizes))
    )
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from([*GATES, "measure", "barrier", "reset"]))
        if kind == "measure":
            if circuit.num_clbits:
                q = draw(st.integers(0, n - 1))
                circuit.measure(q, draw(st.integers(0, circuit.num_clbits - 1)))
        elif kind == "barrier":
            circuit.barrier(*draw(st.permutations(range(n)))[: draw(st.integers(1, n))])
        elif kind == "reset":
            circuit.reset(draw(st.integers(0, n - 1)))
        else:
            width, nparams = GATES[kind]
            if width > n:
                continue
            qubits = draw(st.permutations(range(n)))[:width]
            params = [draw(angles) for _ in range(nparams)]
            getattr(circuit, kind)(*params, *qubits)
    return circuit


@settings(max_examples=200, deadline=None)
@given(circuits())
def test_circuit_ir_round_trip_keeps_order_mapping_measurements_and_registers(
    circuit: QuantumCircuit,
) -> None:
    ir = circuit_to_ir(circuit)
    rebuilt = ir_to_circuit(ir)
    assert shape(rebuilt) == shape(circuit)
    assert [(r.name, r.size) for r in rebuilt.cregs] == [(r.name, r.size) for r in circuit.cregs]
    assert circuit_to_ir(rebuilt) == ir
    assert CircuitIR.model_validate_json(ir.model_dump_json()) == ir


@settings(max_examples=25, deadline=None)
@given(circuits(), st.integers(0, 2**31))
def test_rebuilt_circuit_gives_the_same_counts_as_the_original(
    circuit: QuantumCircuit, seed: int
) -> None:
    if "measure" not in circuit.count_ops():
        return  # nothing to count
    sim = AerSimulator(seed_simulator=seed, max_parallel_threads=1)
    original = sim.run(circuit, shots=200).result().get_counts()
    assert simulate(circuit_to_ir(circuit), NoiseSpec(), 200, seed) == original


@pytest.mark.parametrize(
    "source",
    [
        'OPENQASM 2.0; include "qelib1.inc"; qreg q[3]; creg a[1]; creg b[2]; h q[0]; '
        "cx q[0],q[1]; rz(0.3) q[2]; measure q[0] -> a[0]; measure q[1] -> b[1]; "
        "measure q[2] -> b[0];",
        'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; '
        "c = measure q;",
    ],
)
def test_qasm_through_qtask_ingestion_counts_read_like_qtask(source: str) -> None:
    ir = ir_from_qasm(source, LIMITS)
    circuit = (
        qasm2.loads(source) if source.startswith("OPENQASM 2") else ir_to_circuit(ir)
    )  # what a qtask worker runs for the same source
    qtask_counts = AerSimulator(seed_simulator=7).run(circuit, shots=300).result().get_counts()
    assert simulate(ir, NoiseSpec(), 300, 7) == qtask_counts
    assert all(" " in key for key in qtask_counts) == (len(ir.cregs) > 1)


def test_user_gates_are_decomposed_to_standard_ones() -> None:
    source = (
        'OPENQASM 2.0; include "qelib1.inc"; gate bell a, b { h a; cx a, b; } qreg q[2]; '
        "creg c[2]; bell q[0], q[1]; measure q -> c;"
    )
    ir = ir_from_qasm(source, LIMITS)
    assert [op.name for op in ir.instructions] == ["h", "cx", "measure", "measure"]


def test_invalid_qasm_gives_qtasks_structured_error() -> None:
    with pytest.raises(CircuitError, match="line 1, column"):
        ir_from_qasm('OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; hh q[0];', LIMITS)


def test_control_flow_and_unbound_parameters_are_refused() -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(0)
    with pytest.raises(CircuitError, match="Control flow"):
        circuit_to_ir(circuit)
    from qiskit.circuit import Parameter

    unbound = QuantumCircuit(1)
    unbound.rx(Parameter("t"), 0)
    with pytest.raises(CircuitError, match="without a value"):
        circuit_to_ir(unbound)


def test_ir_naming_unknown_operations_or_bits_is_refused() -> None:
    with pytest.raises(CircuitError, match="does not know"):
        ir_to_circuit(CircuitIR(num_qubits=1, num_clbits=0, instructions=(Instruction(name="zz"),)))
    bad_qubit = Instruction(name="h", qubits=(3,))
    with pytest.raises(CircuitError, match="qubit 3"):
        ir_to_circuit(CircuitIR(num_qubits=1, num_clbits=0, instructions=(bad_qubit,)))


def test_a_bell_declaring_127_qubits_becomes_an_ir_of_the_2_it_uses_with_its_3_bits() -> None:
    # A circuit transpiled for a 127-qubit device: admission counts the used qubits (30 here),
    # so the IR must not carry the idle ones (a fragment's state would be 2**127 amplitudes).
    source = (
        'OPENQASM 3.0; include "stdgates.inc"; qubit[127] q; bit[3] c; h q[5]; cx q[5], q[90]; '
        "barrier q; c[0] = measure q[5]; c[1] = measure q[90];"
    )
    ir = ir_from_qasm(source, LIMITS)
    assert (ir.num_qubits, ir.num_clbits) == (2, 3)
    assert set(simulate(ir, NoiseSpec(), 200, 3)) == {"000", "011"}
