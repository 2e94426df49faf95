"""The benchmark workloads: which OpenQASM 3 circuits each one submits, and how many.

Every generator is deterministic (random circuits come from a seeded `random.Random`), so the
service and the bare-Aer reference run exactly the same sources. Every circuit uses only gates
that Aer runs natively and that Qiskit's native OpenQASM 3 importer reads (numeric angles, no
`pi`), so neither side transpiles or falls back to the ANTLR importer.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import BELL as BELL  # re-exported for run.py
from qtask_testkit import ghz

SHOTS = 1024
HEADER = 'OPENQASM 3.0; include "stdgates.inc";'


@dataclass(frozen=True, slots=True)
class Workload:
    """A named list of circuit sources; `large` workloads also report total times."""

    name: str
    sources: list[str]
    large: bool
    description: str


def qft(n: int, seed: int = 0) -> str:
    """QFT-n on a seeded computational basis state, with `cp`, `h` and `swap` gates."""
    rng = random.Random(f"qft{n}-{seed}")
    lines = [HEADER, f"qubit[{n}] q; bit[{n}] c;"]
    lines += [f"x q[{i}];" for i in range(n) if rng.random() < 0.5]
    for j in range(n):
        lines.append(f"h q[{j}];")
        for k in range(j + 1, n):
            lines.append(f"cp({math.pi / 2 ** (k - j)!r}) q[{k}], q[{j}];")
    lines += [f"swap q[{i}], q[{n - 1 - i}];" for i in range(n // 2)]
    lines.append("c = measure q;")
    return "\n".join(lines)


def random_circuit(n: int, depth: int, rng: random.Random) -> str:
    """n qubits, `depth` layers of a random rx/ry/rz on every qubit then cx on random pairs."""
    lines = [HEADER, f"qubit[{n}] q; bit[{n}] c;"]
    qubits = list(range(n))
    for _ in range(depth):
        for i in qubits:
            gate = rng.choice(("rx", "ry", "rz"))
            lines.append(f"{gate}({rng.uniform(0, 2 * math.pi):.6f}) q[{i}];")
        rng.shuffle(qubits)
        lines += [f"cx q[{a}], q[{b}];" for a, b in zip(qubits[::2], qubits[1::2], strict=False)]
    lines.append("c = measure q;")
    return "\n".join(lines)


def random_circuits(n: int, depth: int, count: int, seed: int) -> list[str]:
    """`count` distinct random circuits from one seeded generator."""
    rng = random.Random(seed)
    return [random_circuit(n, depth, rng) for _ in range(count)]


# name: (default count, --quick count, large, description)
SIZES: dict[str, tuple[int, int, bool, str]] = {
    "bell": (2000, 300, False, "Bell, 2 qubits"),
    "ghz20": (200, 50, False, "GHZ-20 (Clifford)"),
    "qft20": (50, 10, True, "QFT-20 (cp/h/swap)"),
    "random20": (20, 4, True, "random 20 qubits, depth 20"),
    "random22": (6, 2, True, "random 22 qubits, depth 20"),
    "mix": (1000, 200, False, "90% Bell, 8% GHZ-20, 2% random20"),
}
NAMES = list(SIZES)
SKIPPED_IN_QUICK = frozenset({"random22"})  # unless named with --workload


def build(name: str, quick: bool, count: int | None = None) -> Workload:
    """The workload `name` with `count` tasks, or at its default or --quick size."""
    default, quick_count, large, description = SIZES[name]
    n = count if count is not None else quick_count if quick else default
    if name == "bell":
        sources = [BELL] * n
    elif name == "ghz20":
        sources = [ghz(20)] * n
    elif name == "qft20":
        sources = [qft(20, seed) for seed in range(n)]
    elif name == "random20":
        sources = random_circuits(20, 20, n, seed=20)
    elif name == "random22":
        sources = random_circuits(22, 20, n, seed=22)
    elif name == "mix":
        rng = random.Random(1234)
        randoms = iter(random_circuits(20, 20, max(1, n // 50 + 1), seed=2020))
        ghz20 = ghz(20)
        sources = []
        for index in range(n):
            if index % 50 == 25:
                sources.append(next(randoms))
            elif index % 50 in range(4, 50, 12):
                sources.append(ghz20)
            else:
                sources.append(BELL)
        rng.shuffle(sources)
    else:
        raise ValueError(f"unknown workload {name!r}")
    return Workload(name=name, sources=sources, large=large, description=description)
