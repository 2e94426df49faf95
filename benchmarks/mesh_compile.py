"""The mesh planner's compile time (FR-003/004, NFR: P95 <= 2 s; qtask's target <= 200 ms) for
circuits of up to 50 operations on registry snapshots of 3 and 10 nodes.

    PYTHONPATH=src .venv/bin/python benchmarks/mesh_compile.py [-n 200] [--seed 7]

Circuits: GHZ, QFT (its controlled phases), QAOA MaxCut (ring, p=2) and seeded random circuits,
each at most 50 operations with their measurements. Snapshots: "mixed" cycles full Aer nodes,
gate-level services (1-qubit gates only; 2-qubit gates only) and noisy full nodes; "services"
has the two gate-level services only, so every circuit is split into slices (the search's
hard case: exhaustive up to 512 assignments, greedy beyond). Link latencies and fidelities
are seeded. "plan" is `plan_job` alone (what the coordinator adds to a job once
the IR exists); "qasm+plan" adds qtask's parsing of the OpenQASM into the IR.
Prints a markdown table; never asserts on time.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from typing import Any

from qiskit import QuantumCircuit, qasm2

from qtask.circuits.ingest import Limits
from qtask.mesh.config import PlannerSettings
from qtask.mesh.ir import ir_from_qasm
from qtask.mesh.planner import plan_job

MAX_OPS = 50
ONE_Q = ["h", "x", "rz", "ry", "s", "t", "sx"]
TWO_Q = ["cx", "cz", "swap"]


def ghz(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n, n)
    qc.h(0)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    qc.measure(range(n), range(n))
    return qc


def qft(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n, n)
    for q in range(n):
        qc.h(q)
        for k in range(q + 1, n):
            qc.cp(math.pi / 2 ** (k - q), k, q)
    qc.measure(range(n), range(n))
    return qc


def qaoa_ring(n: int, p: int = 2) -> QuantumCircuit:
    qc = QuantumCircuit(n, n)
    qc.h(range(n))
    for layer in range(p):
        for q in range(n):
            qc.rzz(0.4 + 0.1 * layer, q, (q + 1) % n)
        qc.rx(0.7 - 0.1 * layer, range(n))
    qc.measure(range(n), range(n))
    return qc


def random_circuit(n: int, ops: int, rng: random.Random) -> QuantumCircuit:
    qc = QuantumCircuit(n, n)
    for _ in range(ops - n):
        if rng.random() < 0.4:
            a, b = rng.sample(range(n), 2)
            getattr(qc, rng.choice(TWO_Q))(a, b)
        else:
            name = rng.choice(ONE_Q)
            q = rng.randrange(n)
            if name in ("rz", "ry"):
                getattr(qc, name)(rng.uniform(0, math.pi), q)
            else:
                getattr(qc, name)(q)
    qc.measure(range(n), range(n))
    return qc


def operations(qc: QuantumCircuit) -> int:
    return len(qc.data)


def circuits(rng: random.Random) -> list[tuple[str, QuantumCircuit]]:
    found = [
        ("ghz-8", ghz(8)),
        ("ghz-20", ghz(20)),
        ("qft-5", qft(5)),
        ("qaoa-ring-6", qaoa_ring(6)),
    ]
    found += [(f"random-{n}q", random_circuit(n, MAX_OPS, rng)) for n in (4, 8, 12)]
    for name, qc in found:
        assert operations(qc) <= MAX_OPS, (name, operations(qc))
    return found


def snapshot(size: int, rng: random.Random, *, services_only: bool) -> dict[str, Any]:
    full = [*ONE_Q, *TWO_Q, "p", "cp", "rx", "rzz", "ccx", "measure", "barrier", "reset"]
    kinds = [
        ("full", full, False),
        ("rot", [*ONE_Q, "p", "rx", "measure", "barrier"], False),
        ("two", [*TWO_Q, "cp", "rzz", "measure", "barrier"], False),
        ("noisy", full, True),
    ]
    if services_only:  # no node runs everything: every circuit with both kinds is split
        kinds = kinds[1:3]
    nodes = []
    for i in range(size):
        kind, gates, noisy = kinds[i % len(kinds)]
        nodes.append(
            {
                "node_id": f"12D3KooW{kind}{i:02d}",
                "status": "available",
                "degraded": [],
                "gates": gates,
                "qubit_range": [1, 24],
                "fidelity": round(rng.uniform(0.93, 0.97), 4) if noisy else 0.999,
                "latency_ms": round(rng.uniform(0.5, 15.0), 2),
                "noise": {"depolarizing_1q": 0.002 if noisy else 0.0},
                "capacity": 2,
                "in_use": 0,
            }
        )
    return {"at": 1_700_000_000.0, "ttl_s": 6.0, "nodes": nodes}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="plans per circuit and snapshot")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    settings = PlannerSettings()
    limits = Limits(1 << 20, 64, 100_000, 1 << 30)
    print("| circuit | ops | snapshot | fragments | plan p50 ms | plan p95 ms | plan max ms "
          "| qasm+plan p95 ms | est. fidelity |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for size, services_only in ((3, False), (10, False), (3, True), (10, True)):
        snap = snapshot(size, rng, services_only=services_only)
        label = f"{size} {'services' if services_only else 'mixed'}"
        for name, qc in circuits(rng):
            source = qasm2.dumps(qc)
            ir = ir_from_qasm(source, limits)
            plan_ms: list[float] = []
            full_ms: list[float] = []
            for i in range(args.n):
                start = time.perf_counter()
                plan = plan_job(f"job-{i}", ir, snap, settings, seed=i)
                plan_ms.append((time.perf_counter() - start) * 1000)
                if i < max(20, args.n // 10):
                    start = time.perf_counter()
                    plan_job(f"job-{i}", ir_from_qasm(source, limits), snap, settings, seed=i)
                    full_ms.append((time.perf_counter() - start) * 1000)
            p95 = percentile(plan_ms, 0.95)
            worst = max(worst, p95)
            print(
                f"| {name} | {operations(qc)} | {label} | {len(plan.fragments)} "
                f"| {statistics.median(plan_ms):.2f} | {p95:.2f} | {max(plan_ms):.2f} "
                f"| {percentile(full_ms, 0.95):.2f} | {plan.est_fidelity:.4f} |"
            )
    print(f"\nworst plan P95: {worst:.2f} ms (target <= 200 ms; seed's floor <= 2 s)")


if __name__ == "__main__":
    main()
