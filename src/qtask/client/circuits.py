"""Turn what a caller passes as a circuit into the OpenQASM text the API takes.

A Qiskit `QuantumCircuit` is written with `qiskit.qasm2.dumps` first: the server reads
OpenQASM 2 with Qiskit's native parser, while `qasm3.dumps` writes `pi` (and gate definitions),
which only the server's slow ANTLR importer accepts. Measured on the server's ingest
(benchmarks/qiskit_dumps.py, 2 cores): a 5-qubit rotation circuit with rz(pi/4) costs 0.30 ms
as OpenQASM 2 and 14 ms as OpenQASM 3; a decomposed 5-qubit QFT 0.29 ms vs 7.5 ms; Bell 0.06 vs
0.09 ms. Circuits OpenQASM 2 cannot express (control flow, classical expressions) fall back to
`qasm3.dumps`. Qiskit is imported only when a caller hands over a Qiskit object, so a client-only
install without Qiskit works for OpenQASM text.
"""

from __future__ import annotations

from typing import Any


def to_qasm(circuit: Any) -> str:
    """The OpenQASM text for `circuit`: a str as given, or a Qiskit QuantumCircuit written out."""
    if isinstance(circuit, str):
        return circuit
    if isinstance(circuit, bytes):
        return circuit.decode("utf-8")
    if type(circuit).__module__.startswith("qiskit"):
        from qiskit import qasm2, qasm3

        try:
            return str(qasm2.dumps(circuit))
        except qasm2.QASM2ExportError:
            return str(qasm3.dumps(circuit))
    raise TypeError(
        f"a circuit is OpenQASM text or a qiskit QuantumCircuit, not {type(circuit).__name__}"
    )
