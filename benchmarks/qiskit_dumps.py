"""What a Qiskit-made circuit costs the server to ingest, written as OpenQASM 2 or 3.

    .venv/bin/python benchmarks/qiskit_dumps.py [--repeat 20]

The client (qtask.client.circuits) sends a QuantumCircuit as `qiskit.qasm2.dumps`, falling back
to `qasm3.dumps`; this prints why: for each circuit and format, whether the API's fast path
takes it (`fast`) or it needs the slow ANTLR importer (`SLOW`), and the mean time of the server's
`ingest`. Never asserts.
"""

from __future__ import annotations

import argparse
import math
import time

from qiskit import QuantumCircuit, qasm2, qasm3
from qiskit.circuit.library import QFTGate

from qtask.circuits.ingest import Limits, NeedsSlowPathError, ingest

LIMITS = Limits(
    max_circuit_bytes=1 << 20,
    max_qubits=30,
    max_operations=100_000,
    max_statevector_bytes=1 << 32,
)


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def rotations(n: int = 5, layers: int = 4) -> QuantumCircuit:
    circuit = QuantumCircuit(n)
    for _ in range(layers):
        for i in range(n):
            circuit.rz(math.pi / 4, i)
            circuit.ry(0.3, i)
        for i in range(n - 1):
            circuit.cx(i, i + 1)
    circuit.measure_all()
    return circuit


def qft(n: int = 5) -> QuantumCircuit:
    circuit = QuantumCircuit(n)
    circuit.h(range(n))
    circuit.append(QFTGate(n), range(n))
    circuit.measure_all()
    return circuit.decompose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'circuit':<22} {'format':<6} {'bytes':>6} {'path':<5} {'ingest ms':>10}")
    circuits = [("bell", bell()), ("rotations 5x4 (pi/4)", rotations()), ("qft5 decomposed", qft())]
    for name, circuit in circuits:
        for fmt, dump in (("qasm2", qasm2.dumps), ("qasm3", qasm3.dumps)):
            source = dump(circuit)
            try:
                ingest(source, LIMITS, fast_only=True)
                path = "fast"
            except NeedsSlowPathError:
                path = "SLOW"
            ingest(source, LIMITS)  # warm: the slow importer's first call loads its parser
            start = time.perf_counter()
            for _ in range(args.repeat):
                ingest(source, LIMITS)
            ms = (time.perf_counter() - start) / args.repeat * 1000
            print(f"{name:<22} {fmt:<6} {len(source):>6} {path:<5} {ms:>10.2f}")


if __name__ == "__main__":
    main()
