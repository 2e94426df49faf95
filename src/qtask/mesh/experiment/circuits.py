"""The experiment's benchmark circuits and how their counts are scored (FR-013).

GHZ, an inverse QFT that must return a known integer, QAOA MaxCut (p = 1) on a few graphs and
seeded random circuits; each has at most `MAX_OPERATIONS` operations (measurements included),
one classical register `c` with `c[i] = measure q[i]`, and only gates every default node offers
(`cp` is written as `p` and `cx`, which nodes offer). Pure: no I/O.

The score of a run is the Hellinger fidelity of its counts against the exact distribution, the
ideal statevector's probabilities (keys read like the counts: qubit 0 rightmost).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from qiskit import qasm3
from qiskit.circuit import QuantumCircuit
from qiskit.quantum_info import Statevector, hellinger_fidelity

MAX_OPERATIONS = 50
# The random circuits' gate set (a subset of every node's default gates).
_RANDOM_1Q = ("h", "x", "s", "t", "rx", "ry", "rz")
# QAOA's fixed angles (p = 1): a good region for small MaxCut instances.
QAOA_GAMMA, QAOA_BETA = 0.8, 0.4
GRAPHS: dict[str, tuple[tuple[int, int], ...]] = {
    "triangle": ((0, 1), (1, 2), (0, 2)),
    "ring4": ((0, 1), (1, 2), (2, 3), (3, 0)),
    "bull5": ((0, 1), (1, 2), (0, 2), (1, 3), (2, 4)),
}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark circuit: its name, family, OpenQASM 3 text and exact distribution."""

    name: str
    family: str
    qasm: str
    num_qubits: int
    operations: int
    ideal: dict[str, float]
    gate_counts: dict[str, int]

    def digest(self) -> str:
        """A short hash of the OpenQASM text (the plan records it)."""
        return hashlib.sha256(self.qasm.encode()).hexdigest()[:16]

    def score(self, counts: dict[str, int]) -> float:
        """Hellinger fidelity of `counts` against the exact distribution."""
        return float(
            hellinger_fidelity(self.ideal, {k.replace(" ", ""): v for k, v in counts.items()})
        )


def ghz(n: int) -> QuantumCircuit:
    """GHZ-n: H then a CX chain; ideal counts half 0...0, half 1...1."""
    qc = QuantumCircuit(n, n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    return qc


def _cp(qc: QuantumCircuit, theta: float, a: int, b: int) -> None:
    """Controlled phase from p and cx (nodes offer no `cp`)."""
    qc.p(theta / 2, a)
    qc.cx(a, b)
    qc.p(-theta / 2, b)
    qc.cx(a, b)
    qc.p(theta / 2, b)


def qft(n: int, k: int) -> QuantumCircuit:
    """The Fourier state of the integer `k`, then the inverse QFT: ideally `k` exactly."""
    qc = QuantumCircuit(n, n)
    for j in range(n):
        qc.h(j)
        qc.p(2 * math.pi * k * 2**j / 2**n, j)
    for i in range(n // 2):
        qc.swap(i, n - 1 - i)
    for j in range(n):
        for m in range(j):
            _cp(qc, -math.pi / 2 ** (j - m), m, j)
        qc.h(j)
    return qc


def qaoa(
    edges: tuple[tuple[int, int], ...], gamma: float = QAOA_GAMMA, beta: float = QAOA_BETA
) -> QuantumCircuit:
    """QAOA MaxCut, one layer: H on all, exp(-i gamma Z_a Z_b) per edge (cx rz cx), rx(2 beta)."""
    n = 1 + max(max(edge) for edge in edges)
    qc = QuantumCircuit(n, n)
    qc.h(range(n))
    for a, b in edges:
        qc.cx(a, b)
        qc.rz(2 * gamma, b)
        qc.cx(a, b)
    qc.rx(2 * beta, range(n))
    return qc


def random_circuit(n: int, gates: int, seed: int) -> QuantumCircuit:
    """`gates` random gates on `n` qubits (1-qubit gates of `_RANDOM_1Q`, a third of them cx)."""
    rng = random.Random(seed)
    qc = QuantumCircuit(n, n)
    for _ in range(gates):
        if n > 1 and rng.random() < 1 / 3:
            a, b = rng.sample(range(n), 2)
            qc.cx(a, b)
            continue
        name, q = rng.choice(_RANDOM_1Q), rng.randrange(n)
        if name in ("rx", "ry", "rz"):
            getattr(qc, name)(round(rng.uniform(0, 2 * math.pi), 6), q)
        else:
            getattr(qc, name)(q)
    return qc


def benchmark(name: str, family: str, qc: QuantumCircuit) -> Benchmark:
    """Measure every qubit into `c` and compute the exact distribution."""
    ideal = Statevector(qc).probabilities_dict()
    measured = qc.copy()
    measured.measure(range(qc.num_qubits), range(qc.num_qubits))
    if measured.size() > MAX_OPERATIONS:
        raise ValueError(f"{name} has {measured.size()} operations (at most {MAX_OPERATIONS})")
    return Benchmark(
        name=name,
        family=family,
        qasm=qasm3.dumps(measured),
        num_qubits=qc.num_qubits,
        operations=measured.size(),
        ideal={str(k): float(v) for k, v in ideal.items() if v > 1e-12},
        gate_counts={str(k): int(v) for k, v in measured.count_ops().items()},
    )


def suite(seed: int, *, smoke: bool = False) -> list[Benchmark]:
    """The benchmark set: the smoke set is GHZ-3, QFT-3 and QAOA on a triangle."""
    rng = random.Random(seed)
    found = [
        benchmark("ghz3", "ghz", ghz(3)),
        benchmark("qft3", "qft", qft(3, rng.randrange(1, 8))),
        benchmark("qaoa_triangle", "qaoa", qaoa(GRAPHS["triangle"])),
    ]
    if smoke:
        return found
    found += [
        benchmark("ghz5", "ghz", ghz(5)),
        benchmark("qft4", "qft", qft(4, rng.randrange(1, 16))),
        benchmark("qaoa_ring4", "qaoa", qaoa(GRAPHS["ring4"])),
        benchmark("qaoa_bull5", "qaoa", qaoa(GRAPHS["bull5"])),
        benchmark("random4", "random", random_circuit(4, 30, rng.randrange(2**31))),
        benchmark("random5", "random", random_circuit(5, 40, rng.randrange(2**31))),
    ]
    return found
