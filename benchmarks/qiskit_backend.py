"""What the Qiskit backend (qtask.client.qiskit) adds over the plain client, against qtask serve.

Starts its own `qtask serve` in a temporary directory unless --url is given. For a Bell circuit
(1024 shots), times one at a time: the plain client's submit + wait, `backend.run(qc).result()`,
the same with memory=True, and BackendSamplerV2; then a batch of N circuits both ways. Prints a
markdown table of medians; never asserts. Run: .venv/bin/python benchmarks/qiskit_backend.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from qiskit import QuantumCircuit
from qiskit.primitives import BackendSamplerV2

from qtask.client import Client
from qtask.client.qiskit import QTaskProvider

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import ServerProcess


def bell() -> QuantumCircuit:
    """The Bell circuit with two measured bits."""
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def median_ms(action: Callable[[], object], repeat: int) -> float:
    """The median wall time of `action` in ms, after one untimed warm-up call."""
    action()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    """Parse arguments, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per row")
    parser.add_argument("--batch", type=int, default=100, help="circuits in the batch rows")
    parser.add_argument("--url", help="an already running qtask (default: start one)")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server = ServerProcess(Path(tempfile.mkdtemp()) / "data", workers=1)
        server.start()
        url = server.url
    qc = bell()
    many = [bell() for _ in range(args.batch)]
    provider = QTaskProvider(url)
    backend = provider.get_backend()
    sampler = BackendSamplerV2(backend=backend)
    small = max(3, args.repeat // 5)
    rows: list[tuple[str, float]] = []
    try:
        with Client(url) as client:
            cases: list[tuple[str, Callable[[], object], int]] = [
                ("Client.submit + wait", lambda: client.wait(client.submit(qc)), args.repeat),
                ("backend.run(qc).result()", lambda: backend.run(qc).result(), args.repeat),
                (
                    "backend.run(qc, memory=True).result()",
                    lambda: backend.run(qc, memory=True).result(),
                    args.repeat,
                ),
                ("BackendSamplerV2.run([qc]).result()", lambda: sampler.run([qc]).result(), 10),
                (
                    f"Client.submit_many({args.batch}) + wait",
                    lambda: client.wait(client.submit_many(many)),
                    small,
                ),
                (
                    f"backend.run({args.batch} circuits).result()",
                    lambda: backend.run(many).result(),
                    small,
                ),
            ]
            for name, action, repeat in cases:
                rows.append((f"{name} (x{repeat})", median_ms(action, repeat)))
    finally:
        provider.close()
        if server is not None:
            server.terminate()
    print("Bell, 1024 shots, qtask serve with 1 worker process; median ms of (xN) calls")
    print("| call | ms |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
