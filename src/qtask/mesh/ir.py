"""FR-003: a circuit as the mesh's IR (`CircuitIR`, protocol.py) and back.

Parsing is qtask's own ingestion (qtask.circuits.ingest: OpenQASM 2 and 3, size limits, errors
with line and column); this module only converts the parsed `QuantumCircuit`. The IR keeps
what decides a run's counts: gate order (list order), the flattened qubit and clbit indices of
every operation, measurements, resets and barriers, gate parameters, and the classical
registers' names and sizes in order, so counts of the rebuilt circuit read exactly like
qtask's counts of the submitted one (Aer writes registers last-first, spaced).

Gates outside Qiskit's standard set (a user `gate` definition) are decomposed until they are
standard. What the IR cannot carry is refused with a CircuitError: control flow (`if`, loops),
unbound parameters, `delay`, and classical bits outside exactly one register each. The global
phase does not change counts and is not carried.
"""

from __future__ import annotations

from qiskit.circuit import (
    Barrier,
    ClassicalRegister,
    ControlFlowOp,
    Measure,
    QuantumCircuit,
    QuantumRegister,
    Reset,
)
from qiskit.circuit.library import get_standard_gate_name_mapping

from qtask.circuits.ingest import Limits, ingest, load_program
from qtask.circuits.shape import without_idle_qubits
from qtask.errors import CircuitError
from qtask.mesh.protocol import CircuitIR, Instruction

_STANDARD = get_standard_gate_name_mapping()
# Names the IR carries besides standard gates; `delay` is standard but its unit is lost.
DIRECTIVES = frozenset({"measure", "reset", "barrier"})
GATES = frozenset(_STANDARD) - {"delay", "measure", "reset"}
# A user gate nests at most this deep before it is standard; deeper is refused.
_MAX_DECOMPOSE = 10


def ir_from_qasm(source: str, limits: Limits) -> CircuitIR:
    """Parse OpenQASM 2 or 3 with qtask's ingestion and convert it (CircuitError if invalid)."""
    ingested = ingest(source, limits)
    circuit = load_program(ingested.info.encoding, source, ingested.program)
    # Admission counted the used qubits only: the IR carries those (the same classical bits).
    return circuit_to_ir(without_idle_qubits(circuit))


def circuit_to_ir(circuit: QuantumCircuit) -> CircuitIR:
    """The IR of `circuit`; CircuitError for what the IR cannot carry (module docstring)."""
    circuit = _standard_only(circuit)
    cregs = _register_layout(circuit)
    instructions = []
    for item in circuit.data:
        operation = item.operation
        params = []
        for param in operation.params:
            try:
                params.append(float(param))
            except (TypeError, ValueError):
                raise CircuitError(
                    f"Operation {operation.name} has a parameter without a value ({param}); "
                    "bind every parameter before submitting."
                ) from None
        instructions.append(
            Instruction(
                name=operation.name,
                qubits=tuple(circuit.find_bit(q).index for q in item.qubits),
                clbits=tuple(circuit.find_bit(c).index for c in item.clbits),
                params=tuple(params),
            )
        )
    return CircuitIR(
        num_qubits=circuit.num_qubits,
        num_clbits=circuit.num_clbits,
        instructions=tuple(instructions),
        cregs=cregs,
    )


def ir_to_circuit(ir: CircuitIR) -> QuantumCircuit:
    """The circuit an IR describes: one quantum register `q`, the IR's classical registers."""
    qreg = QuantumRegister(ir.num_qubits, "q")
    cregs = [ClassicalRegister(size, name) for name, size in ir.cregs]
    if not cregs and ir.num_clbits:
        cregs = [ClassicalRegister(ir.num_clbits, "c")]
    if sum(r.size for r in cregs) != ir.num_clbits:
        raise CircuitError(
            f"The IR's classical registers hold {sum(r.size for r in cregs)} bits, "
            f"not its {ir.num_clbits} clbits."
        )
    circuit = QuantumCircuit(qreg, *cregs)
    for op in ir.instructions:
        qubits = [_index(circuit.qubits, i, "qubit", op.name) for i in op.qubits]
        clbits = [_index(circuit.clbits, i, "clbit", op.name) for i in op.clbits]
        if op.name == "measure":
            circuit.append(Measure(), qubits, clbits)
        elif op.name == "reset":
            circuit.append(Reset(), qubits)
        elif op.name == "barrier":
            circuit.append(Barrier(len(qubits)), qubits)
        elif op.name in GATES:
            gate = _STANDARD[op.name].base_class(*op.params)
            if gate.num_qubits != len(qubits) or gate.num_clbits != len(clbits):
                raise CircuitError(
                    f"{op.name} acts on {gate.num_qubits} qubits, not {len(qubits)}."
                )
            circuit.append(gate, qubits, clbits)
        else:
            raise CircuitError(f"The IR names an operation the mesh does not know: {op.name}.")
    return circuit


def operation_names(ir: CircuitIR) -> frozenset[str]:
    """Every operation name the IR uses (a node checks them against its gate set)."""
    return frozenset(op.name for op in ir.instructions)


def _standard_only(circuit: QuantumCircuit) -> QuantumCircuit:
    for _ in range(_MAX_DECOMPOSE):
        custom = set()
        for item in circuit.data:
            operation = item.operation
            if isinstance(operation, ControlFlowOp):
                raise CircuitError(
                    f"Control flow ({operation.name}) cannot run on the mesh; "
                    "submit it to a qtask backend instead."
                )
            if operation.name == "delay":
                raise CircuitError("delay cannot run on the mesh.")
            if operation.name not in GATES | DIRECTIVES:
                custom.add(operation.name)
        if not custom:
            return circuit
        circuit = circuit.decompose(gates_to_decompose=sorted(custom))
    raise CircuitError(f"Gates {sorted(custom)} do not reduce to standard gates.")


def _register_layout(circuit: QuantumCircuit) -> tuple[tuple[str, int], ...]:
    bits = [bit for register in circuit.cregs for bit in register]
    if bits != list(circuit.clbits):
        raise CircuitError(
            "Every classical bit must belong to exactly one classical register, in order, "
            "to run on the mesh."
        )
    return tuple((register.name, register.size) for register in circuit.cregs)


def _index(bits: list[object] | tuple[object, ...], index: int, kind: str, name: str) -> object:
    if not 0 <= index < len(bits):
        raise CircuitError(f"{name} names {kind} {index}; the circuit has {len(bits)}.")
    return bits[index]
