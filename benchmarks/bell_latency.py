"""Submit → result-visible latency of the seed's Bell circuit at light load (one task at a time).

Starts its own `qtask serve` in a temporary directory unless --url is given, submits N Bell
circuits one after another, polls each every millisecond until it is completed, and prints a
table of latency percentiles. Run: .venv/bin/python benchmarks/bell_latency.py [-n 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import BELL, ServerProcess


def measure(url: str, count: int) -> list[float]:
    """Return submit → completed-visible seconds for `count` sequential Bell tasks."""
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            task_id = client.post("/tasks", json={"qc": BELL}).json()["task_id"]
            while client.get(f"/tasks/{task_id}").json()["status"] == "pending":
                time.sleep(0.001)
            latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    """Parse arguments, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="tasks to time (default 200)")
    parser.add_argument("--url", help="an already running qtask (default: start one)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server = ServerProcess(Path(tempfile.mkdtemp()) / "data", workers=args.workers)
        server.start()
        url = server.url
    try:
        measure(url, 20)  # warm up connections and code paths
        ms = sorted(x * 1000 for x in measure(url, args.n))
    finally:
        if server is not None:
            server.terminate()

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))]

    print(f"Bell circuit, 1024 shots, {args.n} tasks one at a time, submit -> result visible")
    print("| stat | ms |")
    print("|---|---|")
    for name, value in [
        ("min", ms[0]),
        ("p50", pct(50)),
        ("p95", pct(95)),
        ("p99", pct(99)),
        ("max", ms[-1]),
        ("mean", statistics.fmean(ms)),
    ]:
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
