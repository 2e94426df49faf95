"""The plain form most submitted circuits take, recognised without building a circuit.

Most circuits sent to `POST /tasks` are an `OPENQASM 3.0;` line, the `stdgates.inc` include,
`qubit[n]` and `bit[n]` registers, standard gates on indexed qubits with number literals for
angles, and `c[i] = measure q[j];`. Qiskit's importer builds a whole QuantumCircuit to check
such a source (~0.15 ms for a Bell pair, the largest piece of the API's CPU per request, issue
15); `recognise` reads the same text with a few regular expressions and returns what ingestion
needs to know about it, or None for anything else, however small: a comment, a `pi`, a
broadcast, an unknown gate, an index out of range, a repeated operand, a name that is a keyword.
None is no verdict: the caller then asks Qiskit, which decides and words any error. So this
module only ever accepts, and only what Qiskit's native importer accepts with the same meaning;
`tests/unit/test_plain.py` checks that against Qiskit on generated and mutated programs.

Which gates exist, with how many qubits and angles, and what Qiskit calls them, is not written
here: the caller passes a table it asked Qiskit for (qtask.circuits.ingest).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_WS = "[ \t\r\n]"
_ID = "[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = "(?:0|[1-9][0-9]{0,8})"  # no leading zeros, no separators: one spelling per value
_REF = rf"({_ID}){_WS}*\[{_WS}*({_NUMBER}){_WS}*\]"
_HEAD = re.compile(rf'{_WS}*OPENQASM{_WS}+3\.0{_WS}*;{_WS}*include{_WS}*"stdgates\.inc"{_WS}*;')
_DECLARATION = re.compile(
    rf"{_WS}*(qubit|bit){_WS}*\[{_WS}*([1-9][0-9]{{0,8}}){_WS}*\]{_WS}*({_ID}){_WS}*"
)
_MEASURE = re.compile(rf"{_WS}*{_REF}{_WS}*={_WS}*measure{_WS}+{_REF}{_WS}*")
_GATE = re.compile(
    rf"{_WS}*({_ID})(?:{_WS}*\(([^()]*)\){_WS}*|{_WS}+)"
    rf"{_REF}(?:{_WS}*,{_WS}*{_REF})?(?:{_WS}*,{_WS}*{_REF})?{_WS}*"
)
_ANGLE = re.compile(rf"{_WS}*(-?{_NUMBER}\.[0-9]{{1,17}}){_WS}*")  # Qiskit: an int is no angle

# Words a register may not be named: OpenQASM 3's keywords, types and built-in names, and `_`,
# which Qiskit's lexer reads as a token of its own (the gates' names are refused through the
# table).
_KEYWORDS = """
    OPENQASM include defcalgrammar def cal defcal gate extern box let break continue if else end
    return for while in switch case default input output const readonly mutable qreg qubit creg
    bool bit int uint float angle complex array void duration stretch gphase inv pow ctrl negctrl
    dim durationof delay reset measure barrier true false pi tau euler sizeof im dt ns us ms s U
    CX nop pragma _
"""
_RESERVED = frozenset(_KEYWORDS.split())


@dataclass(frozen=True, slots=True)
class Gate:
    """A standard gate as Qiskit reads it."""

    qubits: int
    angles: int
    name: str  # Qiskit's name for the operation (`cphase` is `cp`)
    size: int  # the operations it counts as when expanded (shape.expanded_size's count)


@dataclass(frozen=True, slots=True)
class PlainCircuit:
    """What a plain source holds, in the terms ingestion describes a circuit in."""

    names: frozenset[str]  # Qiskit's operation names
    declared_qubits: int
    touched_qubits: int  # distinct qubits a gate or a measurement acts on
    clbits: int
    operations: int
    rotations: tuple[tuple[str, float], ...]  # (Qiskit name, first angle) of each angled gate


def recognise(source: str, gates: Mapping[str, Gate]) -> PlainCircuit | None:
    """What `source` holds if it is a plain program Qiskit reads as such; None otherwise."""
    if "/" in source:  # a comment (or a division): left to the parser
        return None
    head = _HEAD.match(source)
    if head is None:
        return None
    *statements, tail = source[head.end() :].split(";")
    if tail.strip(" \t\r\n") or not statements:
        return None
    registers: dict[str, tuple[bool, int]] = {}  # name: (is quantum, size)
    touched: set[tuple[str, int]] = set()
    names: set[str] = set()
    rotations: list[tuple[str, float]] = []
    declared_qubits = clbits = operations = 0
    for statement in statements:
        if "measure" in statement:
            found = _MEASURE.fullmatch(statement)
            if found is None:
                return None
            bits, bit, qubits, qubit = found.groups()
            target, measured = (bits, int(bit)), (qubits, int(qubit))
            if not (_fits(registers, target, False) and _fits(registers, measured, True)):
                return None
            touched.add(measured)
            names.add("measure")
            operations += 1
            continue
        found = _DECLARATION.fullmatch(statement)
        if found is not None:
            kind, size, name = found.groups()
            if name in registers or name in _RESERVED or name in gates:
                return None
            quantum = kind == "qubit"
            registers[name] = (quantum, int(size))
            if quantum:
                declared_qubits += int(size)
            else:
                clbits += int(size)
            continue
        found = _GATE.fullmatch(statement)
        if found is None:
            return None
        gate = gates.get(found.group(1))
        if gate is None:
            return None
        groups = found.groups()
        operands = [
            (register, int(index))
            for register, index in zip(groups[2::2], groups[3::2], strict=True)
            if register is not None
        ]
        if len(operands) != gate.qubits or len(set(operands)) != len(operands):
            return None
        if not all(_fits(registers, operand, True) for operand in operands):
            return None
        angles = _angles(found.group(2))
        if angles is None or len(angles) != gate.angles:
            return None
        if angles:
            rotations.append((gate.name, angles[0]))
        touched.update(operands)
        names.add(gate.name)
        operations += gate.size
    return PlainCircuit(
        names=frozenset(names),
        declared_qubits=declared_qubits,
        touched_qubits=len(touched),
        clbits=clbits,
        operations=operations,
        rotations=tuple(rotations),
    )


def _fits(registers: dict[str, tuple[bool, int]], ref: tuple[str, int], quantum: bool) -> bool:
    """Whether `name[index]` is in a declared register of that kind."""
    register = registers.get(ref[0])
    return register is not None and register[0] is quantum and ref[1] < register[1]


def _angles(text: str | None) -> list[float] | None:
    """The angles between a gate's parentheses, when each is a plain number literal."""
    if text is None:
        return []
    angles = []
    for part in text.split(","):
        found = _ANGLE.fullmatch(part)
        if found is None:
            return None
        angles.append(float(found.group(1)))
    return angles
