"""Qiskit circuits in Amazon Braket's terms, and Braket's measurements in qtask's (Aer's) terms.

`to_braket` rewrites a circuit into the gates Braket names (one transpile to BRAKET_BASIS, then
gate by gate: cx -> cnot, sdg -> si, sx -> v, p -> phaseshift, ...). Braket measures every qubit
of a circuit at its end, so measurements must come last (a gate after a measure on the same
qubit, `reset` or a classical condition is refused with a message), and every qubit of the
Qiskit circuit gets an identity gate so that Braket measures all of them, in order, contiguous.

`counts_like_aer` turns Braket's per-shot qubit values into the keys Aer writes for the same
circuit: the bits of the classical registers (bit 0 rightmost), the last register leftmost,
registers separated by a space, a bit never measured reads 0. Runs in child processes only (it
imports Qiskit and the Braket SDK); the worker's main process never imports it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Qiskit gate name -> Braket Circuit method. Each pair has the same matrix (Braket's U is
# OpenQASM 3's U, as Qiskit's u is); global phase is dropped, which no measurement sees.
_GATES = {
    "id": "i",
    "x": "x",
    "y": "y",
    "z": "z",
    "h": "h",
    "s": "s",
    "sdg": "si",
    "t": "t",
    "tdg": "ti",
    "sx": "v",
    "sxdg": "vi",
    "rx": "rx",
    "ry": "ry",
    "rz": "rz",
    "p": "phaseshift",
    "u": "u",
    "cx": "cnot",
    "cy": "cy",
    "cz": "cz",
    "cp": "cphaseshift",
    "swap": "swap",
    "ccx": "ccnot",
    "cswap": "cswap",
    "iswap": "iswap",
}
BRAKET_BASIS = tuple(_GATES)
# Instructions that carry no gate for Braket.
_SKIPPED = frozenset({"barrier"})


class UnsupportedOnBraketError(ValueError):
    """Raised when a circuit uses something Braket's gate model cannot run (mid-circuit
    measurement, reset, classical control)."""


# Separates the parts of an encoded Readback (and, in remote_braket, the ARN before it).
SEPARATOR = ";"


@dataclass(frozen=True, slots=True)
class Readback:
    """How Braket's per-qubit measurements of a circuit become Aer's keys."""

    # For each classical bit of the Qiskit circuit (in order), the qubit measured into it last;
    # None for a bit nothing is measured into (it reads 0, as in Aer).
    clbit_qubits: tuple[int | None, ...]
    # The classical registers' sizes, first register first (Aer's key layout).
    register_sizes: tuple[int, ...]

    def encode(self) -> str:
        """`0,1,-;2`: the qubit of each classical bit ('-': none), then the register sizes."""
        bits = ",".join("-" if q is None else str(q) for q in self.clbit_qubits)
        return f"{bits}{SEPARATOR}{','.join(map(str, self.register_sizes))}"

    @classmethod
    def decode(cls, text: str) -> Readback:
        """The inverse of encode."""
        bits, _, sizes = text.partition(SEPARATOR)
        return cls(
            tuple(None if b == "-" else int(b) for b in bits.split(",") if b),
            tuple(int(s) for s in sizes.split(",") if s),
        )


@dataclass(frozen=True, slots=True)
class BraketCircuit:
    """A circuit ready for Braket, and what reading its measurements back needs."""

    circuit: Any  # braket.circuits.Circuit
    num_qubits: int
    readback: Readback

    def openqasm(self) -> str:
        """The circuit as the OpenQASM 3 program Braket's CreateQuantumTask takes."""
        return str(self.circuit.to_ir("OPENQASM").source)


def to_braket(qc: Any) -> BraketCircuit:
    """The Braket form of a Qiskit QuantumCircuit; UnsupportedOnBraketError for what Braket's
    gate model cannot run."""
    from braket.circuits import Circuit
    from qiskit import transpile

    lowered = transpile(qc, basis_gates=[*BRAKET_BASIS, "measure"], optimization_level=0)
    circuit = Circuit()
    clbit_qubits: list[int | None] = [None] * lowered.num_clbits
    measured: set[int] = set()
    for instruction in lowered.data:
        operation = instruction.operation
        name = operation.name
        qubits = [lowered.find_bit(q).index for q in instruction.qubits]
        if getattr(operation, "condition", None) is not None or name in {"if_else", "switch_case"}:
            raise UnsupportedOnBraketError("Braket runs no classically controlled operations.")
        if name in _SKIPPED:
            continue
        if name == "measure":
            clbit = lowered.find_bit(instruction.clbits[0]).index
            clbit_qubits[clbit] = qubits[0]
            measured.add(qubits[0])
            continue
        if measured.intersection(qubits):
            raise UnsupportedOnBraketError(
                f"Braket measures at the end of a circuit only; a {name} follows a measurement."
            )
        method = _GATES.get(name)
        if method is None:
            raise UnsupportedOnBraketError(f"Braket has no gate for {name!r}.")
        angles = [float(p) for p in operation.params]
        getattr(circuit, method)(*qubits, *angles)
    for qubit in range(lowered.num_qubits):
        circuit.i(qubit)  # Braket then measures every qubit, contiguous, in order
    sizes = tuple(register.size for register in lowered.cregs)
    if sum(sizes) != lowered.num_clbits:  # loose bits: one group of all of them, as Qiskit does
        sizes = (lowered.num_clbits,)
    return BraketCircuit(circuit, lowered.num_qubits, Readback(tuple(clbit_qubits), sizes))


def shots_like_aer(
    readback: Readback, measured_qubits: Sequence[int], measurements: Any
) -> list[str]:
    """Each shot's bitstring, keyed as Aer keys its counts for the same circuit."""
    column = {int(qubit): index for index, qubit in enumerate(measured_qubits)}
    picks = [None if q is None else column.get(q) for q in readback.clbit_qubits]
    shots = []
    for row in measurements:
        bits = ["0" if pick is None else str(int(row[pick])) for pick in picks]
        groups = []
        start = 0
        for size in readback.register_sizes:
            groups.append("".join(reversed(bits[start : start + size])))
            start += size
        shots.append(" ".join(reversed(groups)))
    return shots


def counts_like_aer(shots: Sequence[str]) -> dict[str, int]:
    """Counts of per-shot bitstrings."""
    return dict(Counter(shots))
