"""What a circuit asks of the simulator: the operations it names (and AER_OPS, those Aer runs
without transpiling), the qubits it uses (and the circuit without its idle ones), how many
operations it runs once its custom gates are expanded and its loops unrolled."""

from __future__ import annotations

from qiskit.circuit import ControlFlowOp, ForLoopOp, QuantumCircuit, Qubit

# Everything AerSimulator runs without transpiling (its target's operation names, Aer 0.18),
# plus the directives every simulator accepts.
AER_OPS = frozenset(
    [
        "ccx",
        "ccz",
        "cp",
        "crx",
        "cry",
        "crz",
        "cswap",
        "csx",
        "cu",
        "cu1",
        "cu2",
        "cu3",
        "cx",
        "cy",
        "cz",
        "diagonal",
        "ecr",
        "h",
        "id",
        "initialize",
        "mcp",
        "mcphase",
        "mcr",
        "mcrx",
        "mcry",
        "mcrz",
        "mcswap",
        "mcsx",
        "mcu",
        "mcu1",
        "mcu2",
        "mcu3",
        "mcx",
        "mcx_gray",
        "mcy",
        "mcz",
        "multiplexer",
        "p",
        "pauli",
        "r",
        "rx",
        "rxx",
        "ry",
        "ryy",
        "rz",
        "rzx",
        "rzz",
        "s",
        "sdg",
        "swap",
        "sx",
        "sxdg",
        "t",
        "tdg",
        "u",
        "u1",
        "u2",
        "u3",
        "unitary",
        "x",
        "y",
        "z",
        "measure",
        "reset",
        "barrier",
        "delay",
        "store",
        "if_else",
        "while_loop",
        "for_loop",
        "switch_case",
        "break_loop",
        "continue_loop",
    ]
)


def expanded_size(circuit: QuantumCircuit, cap: int) -> int:
    """Operations the simulator will apply: custom gates expanded, `for` loops unrolled.

    `circuit.size()` counts a gate defined as two calls of a gate defined as two calls ... once,
    and a `for` loop over 2**40 values once. Here each custom gate's size is worked out once (by
    name) and multiplied, so a definition bomb costs microseconds to measure; counting stops
    past `cap`. A `while` loop's body counts once (its iterations depend on measurements).
    """
    gate_sizes: dict[tuple[str, int, int], int] = {}

    def size_of(current: QuantumCircuit) -> int:
        total = 0
        for instruction in current.data:
            operation = instruction.operation
            if isinstance(operation, ForLoopOp):
                total += _iterations(operation.params[0], cap) * size_of(operation.blocks[0])
            elif isinstance(operation, ControlFlowOp):
                total += sum(size_of(block) for block in operation.blocks)
            elif operation.name in AER_OPS or getattr(operation, "definition", None) is None:
                total += 1
            else:
                key = (operation.name, operation.num_qubits, len(operation.params))
                if key not in gate_sizes:
                    gate_sizes[key] = 1  # a recursive definition counts as itself
                    gate_sizes[key] = size_of(operation.definition)
                total += gate_sizes[key]
            if total > cap:
                return total
        return total

    return size_of(circuit)


def _iterations(indexset: object, cap: int) -> int:
    try:
        return len(indexset)  # type: ignore[arg-type]
    except (TypeError, OverflowError):  # a range past sys.maxsize
        return cap + 1


# Directives that need no simulated qubit: on an otherwise idle qubit a barrier orders nothing,
# and a delay leaves |0> as it is (relaxation and dephasing do not change it).
_NOT_USE = frozenset({"barrier", "delay"})


def used_qubits(circuit: QuantumCircuit) -> list[Qubit]:
    """The qubits a run needs, in circuit order: those a gate, measure, reset or control-flow
    block touches. A circuit that measures nothing needs every qubit it declares (the worker
    then measures them all, so the keys keep their width), and so does one with classical
    variables (left whole: rebuilding it would have to carry them)."""
    if circuit.num_vars or "measure" not in operation_names(circuit):
        return list(circuit.qubits)
    touched: set[Qubit] = set()
    for instruction in circuit.data:
        if instruction.operation.name not in _NOT_USE:
            touched.update(instruction.qubits)
    return [qubit for qubit in circuit.qubits if qubit in touched]


def without_idle_qubits(circuit: QuantumCircuit) -> QuantumCircuit:
    """`circuit` less the qubits used_qubits leaves out, its classical bits and registers
    (so the result's keys) as they are; `circuit` itself when every qubit is used."""
    used = used_qubits(circuit)
    if len(used) == circuit.num_qubits:
        return circuit
    kept = set(used)
    slim = QuantumCircuit(
        used,
        circuit.clbits,  # in their order, then their registers over them: the same keys
        name=circuit.name,
        global_phase=circuit.global_phase,
        metadata=circuit.metadata,
    )
    for register in circuit.cregs:
        slim.add_register(register)
    for instruction in circuit.data:
        qubits = [qubit for qubit in instruction.qubits if qubit in kept]
        if len(qubits) == len(instruction.qubits):
            slim.append(instruction.operation, qubits, instruction.clbits, copy=False)
        elif qubits and instruction.operation.name == "barrier":
            slim.barrier(*qubits)
        # else: a directive on idle qubits only (_NOT_USE)
    return slim


def operation_names(circuit: QuantumCircuit) -> set[str]:
    """The names of every operation in `circuit`, control-flow blocks included."""
    names: set[str] = set()
    stack = [circuit]
    while stack:
        current = stack.pop()
        for instruction in current.data:
            operation = instruction.operation
            names.add(operation.name)
            if isinstance(operation, ControlFlowOp):
                stack.extend(operation.blocks)
    return names
