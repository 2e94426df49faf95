"""Turn OpenQASM source into a checked circuit and the program a worker will run.

The fast native importers are tried first; the ANTLR importer is the fallback for what they lack
and the authority for error messages (it reports line and column). Includes are checked on the
raw text before any parser sees it, because Qiskit's native OpenQASM 3 importer opens any path
named in an `include`, whatever include path it is given.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass
from typing import Any

from qiskit import qasm2, qasm3, qpy
from qiskit.circuit import QuantumCircuit
from qiskit.exceptions import ExperimentalWarning, QiskitError

from qtask.circuits import shape
from qtask.circuits.plain import Gate, PlainCircuit, recognise
from qtask.constants import ALLOWED_INCLUDES, MAX_DECLARED_CLBITS, MAX_DECLARED_QUBITS
from qtask.domain.task import CircuitInfo, Encoding
from qtask.errors import CircuitError, CircuitTooLargeError

# The native importer warns on every call that it is experimental; we know, and chose it.
warnings.filterwarnings("ignore", category=ExperimentalWarning)

_HEADER = re.compile(rb"\A\s*(?://[^\n]*\n\s*|/\*.*?\*/\s*)*OPENQASM\s+(\d+)(?:\.\d+)?\s*;", re.S)
_INCLUDE_WORD = re.compile(r"\binclude\b")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
# `qubit[5] q`, `bit[2] c`, and the OpenQASM 2 (and 3 legacy) `qreg q[5]`, `creg c[2]`.
_DECLARATION = re.compile(r"\b(qubit|bit|qreg|creg)\b\s*(?:[A-Za-z_]\w*\s*)?\[\s*([^\]]*?)\s*\]")
# Counting expanded operations stops past this; any limit above it is not enforceable.
MAX_COUNTED_OPERATIONS = 10**9
_INCLUDE_STMT = re.compile(r"""include\s*(?:"([^"\n]*)"|'([^'\n]*)')\s*;""")

# Operations Aer's stabilizer method runs; a circuit of only these costs polynomial memory.
# `ecr` is what IBM devices entangle with, so circuits transpiled for them use it.
_CLIFFORD_OPS = frozenset(
    {"h", "s", "sdg", "x", "y", "z", "cx", "cy", "cz", "swap", "id", "sx", "sxdg", "ecr"}
    | {"measure", "barrier", "reset", "delay"}
)
# Rotations the stabilizer method runs when their angle is a multiple of pi/2 (Aer 0.18 takes
# rz so, not rx, ry or p): transpilers write S, Z and Sdg as rz(pi/2), rz(pi), rz(-pi/2). Aer
# checks the multiple exactly (pi/2 + 1e-15 is refused), and so does _quarter_turns.
_CLIFFORD_ROTATIONS = frozenset({"rz"})


@dataclass(frozen=True, slots=True)
class Limits:
    """The size limits a circuit must respect; built from the settings."""

    max_circuit_bytes: int
    max_qubits: int
    max_operations: int
    # Not an admission limit: it decides between statevector and matrix product state.
    max_statevector_bytes: int


@dataclass(frozen=True, slots=True)
class IngestedCircuit:
    """A checked circuit: what it is, and the program bytes when they differ from the source."""

    info: CircuitInfo
    program: bytes | None


class NeedsSlowPathError(Exception):
    """Raised when only the ANTLR importer can decide, and the caller asked for the fast path."""


def ingest(source: str, limits: Limits, *, fast_only: bool = False) -> IngestedCircuit:
    """Check and parse `source`; raise CircuitError with a precise message if it is invalid.

    With `fast_only`, raise NeedsSlowPathError rather than fall back to the slow ANTLR importer,
    so an event loop can try the cheap path inline and send the rest to a worker process.
    """
    raw = source.encode("utf-8", "surrogatepass")
    if len(raw) > limits.max_circuit_bytes:
        raise CircuitTooLargeError(
            f"The circuit is {len(raw)} bytes; the limit is {limits.max_circuit_bytes} bytes."
        )
    if not source.strip():
        raise CircuitError("The circuit is empty.")
    if "\x00" in source:
        raise CircuitError("The circuit contains a NUL character.")
    _check_includes(source)
    if not _check_declared_sizes(source, limits) and fast_only:
        raise NeedsSlowPathError  # a size only the parser can work out: not on an event loop
    version = _version(raw)
    if version == 2:
        circuit, encoding = _parse_qasm2(source), Encoding.QASM2
    elif version == 3:
        plain = recognise(source, _standard_gates())
        if plain is not None:  # what the native importer reads, known without building it
            info = _plain_info(plain)
            check_limits(info, limits)
            return IngestedCircuit(info=info, program=None)
        try:
            circuit, encoding = _parse_qasm3_native(source), Encoding.QASM3
        except _NativeRefusedError:
            if fast_only:
                raise NeedsSlowPathError from None
            circuit, encoding = _parse_qasm3_antlr(source, limits.max_operations), Encoding.QPY
    else:
        raise CircuitError(f"OpenQASM version {version} is not supported; use 2 or 3.")
    info = describe(circuit, encoding)
    check_limits(info, limits)  # before QPY: serialising a gate bomb is itself exponential
    program = dump_qpy(circuit) if encoding is Encoding.QPY else None
    return IngestedCircuit(info=info, program=program)


def load_program(encoding: Encoding, source: str, program: bytes | None) -> QuantumCircuit:
    """Rebuild the circuit a task stored at submission (in a worker), without the ANTLR parser."""
    if encoding is Encoding.QPY:
        if program is None:
            raise CircuitError("The task has no stored program.")
        return qpy.load(io.BytesIO(program))[0]
    if encoding is Encoding.QASM2:
        return _parse_qasm2(source)
    try:
        return _parse_qasm3_native(source)
    except _NativeRefusedError:
        # Only reached if a task stored as native-parsable stops being so (a Qiskit upgrade).
        return _parse_qasm3_antlr(source, MAX_COUNTED_OPERATIONS)


def dump_qpy(circuit: QuantumCircuit) -> bytes:
    """Serialise a circuit in Qiskit's binary QPY format."""
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def describe(circuit: QuantumCircuit, encoding: Encoding) -> CircuitInfo:
    """Summarise what a worker needs to know to plan the run of `circuit`."""
    return _summary(
        encoding,
        shape.operation_names(circuit),
        # What a run simulates: the qubits it uses, not those it declares (see used_qubits).
        num_qubits=len(shape.used_qubits(circuit)),
        num_clbits=circuit.num_clbits,
        num_operations=shape.expanded_size(circuit, MAX_COUNTED_OPERATIONS),
        # (control flow: its blocks' rotations are not looked at, and control flow is no
        # Clifford operation, so such a circuit is not Clifford anyway)
        rotations=(
            (instruction.operation.name, instruction.operation.params[0])
            for instruction in circuit.data
            if instruction.operation.name in _CLIFFORD_ROTATIONS
        ),
    )


def _plain_info(plain: PlainCircuit) -> CircuitInfo:
    """What describe() gives for the circuit Qiskit would build from a plain source (no
    classical variables, no control flow, no directives)."""
    return _summary(
        Encoding.QASM3,
        plain.names,
        num_qubits=plain.touched_qubits if "measure" in plain.names else plain.declared_qubits,
        num_clbits=plain.clbits,
        num_operations=plain.operations,
        rotations=plain.rotations,
    )


def _summary(
    encoding: Encoding,
    names: Set[str],
    *,
    num_qubits: int,
    num_clbits: int,
    num_operations: int,
    rotations: Iterable[tuple[str, Any]],
) -> CircuitInfo:
    """The CircuitInfo of a circuit with these operation names and counts; `rotations` (name,
    angle) is looked at only when the names alone do not settle whether it is Clifford."""
    return CircuitInfo(
        encoding=encoding,
        num_qubits=num_qubits,
        num_clbits=num_clbits,
        num_operations=num_operations,
        clifford=names <= _CLIFFORD_OPS
        or (names <= _CLIFFORD_OPS | _CLIFFORD_ROTATIONS and _quarter_turns(rotations)),
        needs_transpile=not names <= shape.AER_OPS,
        measured="measure" in names,
    )


# The gates of stdgates.inc without a definition of their own here: (qubits, angles).
_STDGATES = {
    **dict.fromkeys(["x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "id"], (1, 0)),
    **dict.fromkeys(["p", "phase", "rx", "ry", "rz", "u1"], (1, 1)),
    "u2": (1, 2),
    "u3": (1, 3),
    **dict.fromkeys(["cx", "CX", "cy", "cz", "ch", "swap"], (2, 0)),
    **dict.fromkeys(["cp", "cphase", "crx", "cry", "crz"], (2, 1)),
    "cu": (2, 4),
    **dict.fromkeys(["ccx", "cswap"], (3, 0)),
}


@functools.cache
def _standard_gates() -> dict[str, Gate]:
    """The table qtask.circuits.plain reads gates with, asked of Qiskit once per process (a
    few milliseconds): what each gate is called once read and what it counts as. A gate the
    installed Qiskit reads differently is left out, so its circuits take the parser."""
    gates = {}
    for name, (qubits, angles) in _STDGATES.items():
        call = name + (f"({', '.join(['0.5'] * angles)})" if angles else "")
        operands = ", ".join(f"q[{i}]" for i in range(qubits))
        source = f'OPENQASM 3.0; include "stdgates.inc"; qubit[{qubits}] q; {call} {operands};'
        try:
            circuit = _parse_qasm3_native(source)
        except _NativeRefusedError:
            continue
        if len(circuit.data) != 1:
            continue
        operation = circuit.data[0].operation
        if operation.num_qubits == qubits and len(operation.params) == angles:
            size = shape.expanded_size(circuit, MAX_COUNTED_OPERATIONS)
            gates[name] = Gate(qubits=qubits, angles=angles, name=operation.name, size=size)
    return gates


def check_limits(info: CircuitInfo, limits: Limits) -> None:
    """Raise CircuitTooLargeError when the circuit is over the qubit or operation limit."""
    if info.num_qubits == 0:
        raise CircuitError("The circuit declares no qubits.")
    if info.num_qubits > limits.max_qubits:
        raise CircuitTooLargeError(
            f"The circuit has {info.num_qubits} qubits; the limit is {limits.max_qubits}."
        )
    if info.num_operations > limits.max_operations:
        raise CircuitTooLargeError(
            f"The circuit has {info.num_operations} operations; "
            f"the limit is {limits.max_operations}."
        )
    # No memory rule here: a non-Clifford circuit whose statevector would exceed
    # limits.max_statevector_bytes runs with the matrix product state method
    # (execution.methods), whose memory only running shows; the worker bounds it.


class _NativeRefusedError(Exception):
    """The native importer could not read the source (unsupported feature or a real error)."""


def _version(raw: bytes) -> int:
    match = _HEADER.match(raw)
    # OpenQASM 3 makes the version line optional; without one, read the source as version 3.
    return int(match.group(1)) if match else 3


def _check_includes(source: str) -> None:
    # Every occurrence of the word, even in a comment, must be an allowed include statement:
    # a stricter rule than the grammar's, and one no comment or string trick can get around.
    for word in _INCLUDE_WORD.finditer(source):
        stmt = _INCLUDE_STMT.match(source, word.start())
        name = (stmt.group(1) or stmt.group(2)) if stmt else None
        if name not in ALLOWED_INCLUDES:
            line = source.count("\n", 0, word.start()) + 1
            shown = f'"{name}"' if name is not None else "this include"
            raise CircuitError(
                f"Line {line}: {shown} cannot be included; only "
                f"{' and '.join(sorted(ALLOWED_INCLUDES))} are available."
            )


def _parse_qasm2(source: str) -> QuantumCircuit:
    try:
        # An empty include path: qelib1.inc is built in and nothing may be read from disk.
        return qasm2.loads(
            source,
            include_path=(),
            custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS,
        )
    except qasm2.QASM2ParseError as exc:
        text = getattr(exc, "message", None) or str(exc)  # str() wraps the message in quotes
        raise CircuitError(f"Invalid OpenQASM 2: {_qasm2_message(text)}") from None
    except (QiskitError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CircuitError(f"Invalid OpenQASM 2: {exc}") from None


def _parse_qasm3_native(source: str) -> QuantumCircuit:
    try:
        with _output_silenced():
            return qasm3.loads_experimental(source, include_path=[])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        # Several unrelated types, and a Rust panic (pyo3's PanicException derives from
        # BaseException) on some inputs; the ANTLR importer then decides.
        raise _NativeRefusedError from exc


def _parse_qasm3_antlr(source: str, max_operations: int) -> QuantumCircuit:
    import openqasm3
    import openqasm3.parser
    import qiskit_qasm3_import

    try:
        program = openqasm3.parse(source)
    except openqasm3.parser.QASM3ParsingError as exc:
        raise CircuitError(f"Invalid OpenQASM 3: {_antlr_message(exc)}") from None
    except RecursionError:
        raise CircuitError("Invalid OpenQASM 3: the program is nested too deeply.") from None
    _check_expansion(program, max_operations)
    try:
        return qiskit_qasm3_import.convert(program)
    except qiskit_qasm3_import.ConversionError as exc:
        raise CircuitError(f"Invalid OpenQASM 3: {_conversion_message(str(exc))}") from None
    except RecursionError:
        raise CircuitError("Invalid OpenQASM 3: the program is nested too deeply.") from None
    except Exception as exc:  # the converter raises bare errors for some unsupported programs
        raise CircuitError(f"Unsupported OpenQASM 3: {exc}") from None


def _check_expansion(program: Any, max_operations: int) -> None:
    """Refuse gate definitions and `for` loops that expand past the operation limit, measured
    on the syntax tree before the converter expands them.

    The converter copies a gate's definition at every call, so `gate g1 a { g0 a; g0 a; }` ...
    nested 25 deep takes it hours, and it hangs on a loop over more than 2**63 values; measured
    here, both take microseconds. Loops whose bounds are not plain numbers are left to the
    parse deadline and to the count made after conversion.
    """
    from openqasm3 import ast

    def too_large(what: str, size: int) -> CircuitTooLargeError:
        return CircuitTooLargeError(
            f"{what} expands to {size} operations; the limit is {max_operations}."
        )

    sizes: dict[str, int] = {}

    def size_of(statements: list[Any], what: str) -> int:
        total = 0
        for statement in statements:
            if isinstance(statement, ast.QuantumGateDefinition):
                name = statement.name.name
                sizes[name] = size_of(statement.body, f"Gate '{name}'")
                continue
            if isinstance(statement, ast.QuantumGate):
                total += sizes.get(statement.name.name, 1)
            elif isinstance(statement, ast.ForInLoop):
                body = size_of(statement.block, what)
                total += _loop_iterations(statement.set_declaration, ast) * body
            else:
                total += 1
            if total > max_operations:
                raise too_large(what, total)
        return total

    size_of(program.statements, "The program")


def _loop_iterations(values: Any, ast: Any) -> int:
    if isinstance(values, ast.DiscreteSet):
        return len(values.values)
    if isinstance(values, ast.RangeDefinition):
        parts = [values.start, values.end, values.step or ast.IntegerLiteral(value=1)]
        if all(isinstance(part, ast.IntegerLiteral) for part in parts):
            start, end, step = (part.value for part in parts)
            if step != 0:
                return max(0, int((end - start) // step) + 1)
    return 1  # not known before conversion


def _antlr_message(exc: BaseException) -> str:
    text = str(exc)
    if text:
        match = re.match(r"L(\d+):C(\d+): (.*)", text, re.S)
        if match:
            return f"line {match[1]}, column {int(match[2]) + 1}: {match[3]}"
        return text
    cause: BaseException | None = exc.__cause__
    while cause is not None:
        token = getattr(cause, "offendingToken", None)
        if token is None and cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
            continue
        if token is not None:
            shown = "end of input" if token.text == "<EOF>" else f"'{token.text}'"
            return (
                f"line {token.line}, column {token.column + 1}: unexpected {shown} "
                "(is a ';' missing before it?)"
            )
        break
    return "syntax error"


def _conversion_message(text: str) -> str:
    match = re.match(r"(\d+),(\d+): (.*)", text, re.S)
    if match:
        return f"line {match[1]}, column {int(match[2]) + 1}: {match[3]}"
    return text


def _qasm2_message(text: str) -> str:
    match = re.match(r"<input>:(\d+),(\d+): (.*)", text, re.S)
    if match:
        return f"line {match[1]}, column {int(match[2]) + 1}: {match[3]}"
    return text


def _check_declared_sizes(source: str, limits: Limits) -> bool:
    """Refuse declarations of more qubits or bits than allowed, before any parser allocates them.

    Returns False when some register's size is not a plain number (a constant or expression):
    only a parser can work it out, so the caller must parse where a deadline protects it.
    """
    text = _COMMENT.sub(" ", source)
    qubits = clbits = 0
    known = True
    for match in _DECLARATION.finditer(text):
        size = match.group(2).replace("_", "")
        if not size.isdecimal():
            known = False
            continue
        if match.group(1) in ("qubit", "qreg"):
            qubits += int(size)
        else:
            clbits += int(size)
    if qubits > MAX_DECLARED_QUBITS:
        raise CircuitTooLargeError(
            f"The circuit declares {qubits} qubits; the limit is {MAX_DECLARED_QUBITS}."
        )
    if clbits > MAX_DECLARED_CLBITS:
        raise CircuitTooLargeError(
            f"The circuit declares {clbits} classical bits; the limit is {MAX_DECLARED_CLBITS}."
        )
    return known


def _quarter_turns(rotations: Iterable[tuple[str, Any]]) -> bool:
    """Whether each (name, angle) of a rotation Aer may run as Clifford turns by an exact
    multiple of pi/2, as Aer's stabilizer method requires; an unbound parameter does not."""
    for name, angle in rotations:
        if name in _CLIFFORD_ROTATIONS:
            try:
                quarters = float(angle) / (math.pi / 2)
            except TypeError:  # a ParameterExpression with free parameters
                return False
            if quarters != round(quarters):
                return False
    return True


@contextlib.contextmanager
def _output_silenced() -> Iterator[None]:
    # The native importer prints its diagnostics, quoting the user's source, straight to file
    # descriptors 1 and 2. They would land in the service's logs as non-JSON lines; the ANTLR
    # importer reports errors instead. The window is the parse alone (microseconds).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    global _devnull
    if _devnull is None:  # opened once per process: opening it per parse cost ~10 µs
        _devnull = os.open(os.devnull, os.O_WRONLY)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(_devnull, 1)
        os.dup2(_devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


_devnull: int | None = None  # _output_silenced's /dev/null descriptor
