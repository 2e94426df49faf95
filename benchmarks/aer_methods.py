"""End-to-end time of one circuit per Aer method through `qtask serve`, next to bare Aer.

Starts its own `qtask serve` (1 worker process) in a temporary directory unless --url is given,
submits each circuit one at a time (`-n` times), polls every millisecond until it is completed,
and prints the median submit -> result-visible time with the method the worker logged, beside
the same circuit run by bare Aer in this process with that method. The circuits: GHZ-50
(stabilizer), a 40-qubit chain of rx/rz and nearest-neighbour cx, 3 layers (matrix product
state: its statevector would take 16 TiB; Aer's automatic method answers "Insufficient memory"),
and the same chain at 20 qubits (statevector).
Run: .venv/bin/python benchmarks/aer_methods.py [-n 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import ServerProcess, chain, ghz

SHOTS = 1024


CIRCUITS = {
    "ghz-50": (ghz(50), "stabilizer"),
    "chain-40x3": (chain(40, 3), "matrix_product_state"),
    "chain-20x3": (chain(20, 3), "statevector"),
}


def through_service(url: str, source: str, count: int) -> tuple[float, list[str]]:
    """Median submit -> completed-visible seconds, and the task ids."""
    times, ids = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post("/tasks", json={"qc": source, "shots": SHOTS})
            response.raise_for_status()
            task_id = response.json()["task_id"]
            while (body := client.get(f"/tasks/{task_id}").json())["status"] == "pending":
                time.sleep(0.001)
            if body["status"] != "completed":
                raise RuntimeError(f"{task_id}: {body}")
            times.append(time.perf_counter() - started)
            ids.append(task_id)
    return statistics.median(times), ids


def bare_aer(source: str, method: str, count: int) -> float:
    """Median seconds of parse + run with bare Aer and the given method."""
    from qiskit import qasm3
    from qiskit_aer import AerSimulator

    simulator = AerSimulator(method=method)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        circuit = qasm3.loads_experimental(source)
        if not any(i.operation.name == "measure" for i in circuit.data):
            circuit.measure_all()
        result = simulator.run(circuit, shots=SHOTS).result()
        assert result.success, result.status
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    """Parse arguments, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10, help="runs of each circuit (default 10)")
    args = parser.parse_args()
    server = ServerProcess(Path(tempfile.mkdtemp()) / "data", workers=1)
    server.start()
    rows = []
    try:
        for name, (source, expected) in CIRCUITS.items():
            through_service(server.url, source, 1)  # warm up
            median, ids = through_service(server.url, source, args.n)
            rows.append((name, expected, median, ids))
    finally:
        server.terminate()
    logged: dict[str, str] = {}
    for line in server.log().splitlines():
        if '"task_finished"' in line:
            record = json.loads(line)
            logged[record["task_id"]] = record.get("method")
    print(f"{args.n} runs each, {SHOTS} shots, one at a time; median seconds")
    print("| circuit | method logged | qtask serve s | bare Aer s (same method) |")
    print("|---|---|---|---|")
    for name, expected, median, ids in rows:
        methods = {logged.get(task_id) for task_id in ids}
        shown = ", ".join(sorted(str(m) for m in methods))
        bare = bare_aer(CIRCUITS[name][0], expected, args.n)
        print(f"| {name} | {shown} | {median:.3f} | {bare:.3f} |")


if __name__ == "__main__":
    main()
