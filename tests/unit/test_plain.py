"""The plain-program recogniser against Qiskit's native importer: whatever it accepts, Qiskit
must read, and describe() of Qiskit's circuit must say what the recogniser says."""

from __future__ import annotations

import random

import pytest

from qtask.circuits import ingest
from qtask.circuits.ingest import Limits, _NativeRefusedError, _parse_qasm3_native, _plain_info
from qtask.circuits.plain import recognise
from qtask.domain.task import Encoding
from qtask_testkit import BELL

GATES = ingest._standard_gates()
LIMITS = Limits(
    max_circuit_bytes=1 << 20, max_qubits=30, max_operations=10**6, max_statevector_bytes=1 << 30
)
SPACES = [" ", "  ", "\t", "\n", " \n  ", "\r\n"]
ANGLES = [
    "0.0",
    "0.5",
    "-0.5",
    "1.0",
    "3.141592653589793",
    "1.5707963267948966",
    "-2.0",
    "12.25",
    "-0.0",
]
# Characters a mutation inserts: the ones the grammar turns on, and some it has no place for.
INSERTED = [*'[]();,=-. 0123456789qcxhmz\t\n/"#{}@$π', "measure", "pi", "//", "->"]
RESERVED_NAMES = ["h", "cx", "rz", "measure", "qubit", "bit", "pi", "U", "if", "gate", "reset", "_"]


def program(rng: random.Random) -> str:
    """A random plain program: registers, standard gates with literal angles, measurements."""
    sp = lambda: rng.choice(SPACES)  # noqa: E731
    qregs = [(f"q{i}" if i else "q", rng.randint(1, 4)) for i in range(rng.randint(1, 2))]
    cregs = [(f"c{i}" if i else "c", rng.randint(1, 4)) for i in range(rng.randint(0, 2))]
    lines = [f"OPENQASM{sp()}3.0;", f'include{sp()}"stdgates.inc";']
    declarations = [f"qubit[{n}]{sp()}{name};" for name, n in qregs]
    declarations += [f"bit{sp()}[{n}]{sp()}{name};" for name, n in cregs]
    rng.shuffle(declarations)
    lines += declarations
    qubits = [(name, i) for name, n in qregs for i in range(n)]
    bits = [(name, i) for name, n in cregs for i in range(n)]
    for _ in range(rng.randint(0, 12)):
        if bits and rng.random() < 0.3:
            (cname, ci), (qname, qi) = rng.choice(bits), rng.choice(qubits)
            lines.append(f"{cname}[{ci}]{sp()}={sp()}measure {qname}[{sp()}{qi}];")
            continue
        name, gate = rng.choice(sorted(GATES.items()))
        if gate.qubits > len(qubits):
            continue
        operands = rng.sample(qubits, gate.qubits)
        angles = [rng.choice(ANGLES) for _ in range(gate.angles)]
        call = name + (f"({', '.join(angles)}){sp()}" if angles else sp())
        lines.append(call + f",{sp()}".join(f"{r}[{i}]" for r, i in operands) + ";")
    return sp().join(lines) + rng.choice(["", "\n", " "])


def mutate(source: str, rng: random.Random) -> str:
    """`source` with one small random change."""
    at = rng.randrange(len(source) + 1)
    kind = rng.randrange(5)
    if kind == 0:
        return source[:at] + source[at + 1 :]
    if kind == 1:
        return source[:at] + rng.choice(INSERTED) + source[at:]
    if kind == 2:  # an index one past the end, or any other number
        return source.replace("[0]", f"[{rng.choice(['1', '4', '00', '01', '-1'])}]", 1)
    if kind == 3:
        return source.replace(" q;", f" {rng.choice(RESERVED_NAMES)};", 1)
    statements = source.split(";")
    i, j = rng.randrange(len(statements)), rng.randrange(len(statements))
    statements[i], statements[j] = statements[j], statements[i]
    return ";".join(statements)


def qiskit_info(source: str):  # type: ignore[no-untyped-def]
    """describe() of the circuit Qiskit's native importer reads, or None when it refuses."""
    try:
        circuit = _parse_qasm3_native(source)
    except _NativeRefusedError:
        return None
    return ingest.describe(circuit, Encoding.QASM3)


def test_bell_is_plain_and_described_as_qiskit_describes_it() -> None:
    plain = recognise(BELL, GATES)
    assert plain is not None
    assert _plain_info(plain) == qiskit_info(BELL)
    assert ingest.ingest(BELL, LIMITS).info == qiskit_info(BELL)
    assert ingest.ingest(BELL, LIMITS).program is None


def test_every_standard_gate_is_in_the_table() -> None:
    assert set(GATES) == set(ingest._STDGATES)
    assert GATES["cphase"].name == "cp"
    assert GATES["CX"].name == "cx"
    assert GATES["ch"].size > 1  # not an Aer operation: counted as its definition


def test_generated_plain_programs_are_recognised_as_qiskit_reads_them() -> None:
    rng = random.Random(15)
    for _ in range(600):
        source = program(rng)
        plain = recognise(source, GATES)
        assert plain is not None, source
        assert _plain_info(plain) == qiskit_info(source), source


def test_whatever_it_accepts_of_mutated_programs_qiskit_reads_the_same() -> None:
    rng = random.Random(1515)
    accepted = refused = 0
    for _ in range(3000):
        source = mutate(program(rng), rng)
        plain = recognise(source, GATES)
        if plain is None:
            refused += 1
            continue
        accepted += 1
        assert _plain_info(plain) == qiskit_info(source), source
    assert accepted > 300  # both sides were exercised
    assert refused > 300


@pytest.mark.parametrize(
    "body",
    [
        "qubit[2] q; h q;",  # a broadcast
        "qubit[2] q; bit[2] c; measure q[0] -> c[0];",  # the native importer refuses it
        "qubit[2] q; h q[2];",  # out of range
        "qubit[2] q; cx q[0], q[0];",  # a repeated operand
        "qubit[2] q; h q[01];",  # a number with a leading zero
        "qubit[2] q; rz(pi/2) q[0];",  # an expression
        "qubit[2] q; // a comment\nh q[0];",
        "qubit[2] h; h h[0];",  # a register named as a gate
        "qubit[1] _; h _[0];",  # `_` is a token of its own to Qiskit's lexer
        "qubit[2] q; qubit[1] q;",  # declared twice
        "qubit[2] q; bit[1] q;",
        "qubit[2] q; hq[0];",
        "qubit[2] q; rz q[0];",  # an angle missing
        "qubit[2] q; h(0.5) q[0];",  # an angle too many
        "qubit[2] q; bit[1] c; c[0] = measure q[0]; c[0] = measure q[5];",
        "qubit[2] q; h q[0];;",  # an empty statement
        "qubit[2] q; h q[0]; x",  # no final semicolon
        "h q[0]; qubit[2] q;",  # used before it is declared
        "qubit[2] q; bit[1] c; q[0] = measure c[0];",  # measured into a qubit
    ],
)
def test_anything_else_is_left_to_the_parser(body: str) -> None:
    source = f'OPENQASM 3.0; include "stdgates.inc"; {body}'
    assert recognise(source, GATES) is None


@pytest.mark.parametrize(
    "source",
    [
        'OPENQASM 3; include "stdgates.inc"; qubit[1] q; h q[0];',  # the native importer refuses
        'include "stdgates.inc"; qubit[1] q; h q[0];',
        "OPENQASM 3.0; qubit[1] q; h q[0];",  # no stdgates: no gates
        'OPENQASM 2.0; include "qelib1.inc"; qreg q[1]; h q[0];',
    ],
)
def test_other_headers_are_left_to_the_parser(source: str) -> None:
    assert recognise(source, GATES) is None


def test_a_plain_circuit_over_the_limits_is_refused_as_the_parsed_one_is() -> None:
    small = Limits(
        max_circuit_bytes=1 << 20, max_qubits=2, max_operations=3, max_statevector_bytes=1 << 30
    )
    wide = (
        'OPENQASM 3.0; include "stdgates.inc"; qubit[3] q; bit[3] c; '
        "c[2] = measure q[2]; h q[0]; x q[1];"
    )
    with pytest.raises(ingest.CircuitTooLargeError, match="3 qubits"):
        ingest.ingest(wide, small)
    with pytest.raises(ingest.CircuitTooLargeError, match="4 operations"):
        ingest.ingest(BELL, small)
