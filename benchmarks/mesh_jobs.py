"""Mesh jobs end to end: `qtask coordinator` and one ideal `qtask node` on loopback; N Bell jobs
one after another through the FR-009 API; where the time goes (the seed's NFR-003 asks for a
P95 orchestration overhead per remote fragment <= 300 ms, excluding the quantum operation).

    PYTHONPATH=src:tests .venv/bin/python benchmarks/mesh_jobs.py [-n 50]

Per job, from the coordinator's own timestamps (GET /api/v1/jobs/{id}):
- total: submission stored -> COMPLETED stored;
- execute: the EXECUTE round trip (request out -> counts back; the node's Aer run inside);
- orchestration: total - execute (compile to IR, plan, RESERVE round trip, every database
  write before each step);
and, from the client, submit -> COMPLETED seen with `GET` polled every 5 ms. Prints a
markdown table; never asserts on time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from meshcoord import CoordinatorProcess
from meshkit import node_process
from summary import quantiles

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        coordinator = CoordinatorProcess(root / "coordinator").start()
        node = node_process(root / "nodes", "node", bootstrap=[coordinator.addr]).start()
        try:
            with httpx.Client(base_url=coordinator.url, timeout=10) as http:
                while not http.get("/api/v1/nodes", params={"available": "true"}).json()["nodes"]:
                    time.sleep(0.05)
                total, execute, orchestration, client = [], [], [], []
                for index in range(args.n + 5):
                    started = time.perf_counter()
                    job_id = http.post(
                        "/api/v1/circuits/submit", json={"qasm": BELL, "shots": 1000, "seed": 1}
                    ).json()["job_id"]
                    while (body := http.get(f"/api/v1/jobs/{job_id}").json())["state"] not in (
                        "COMPLETED", "FAILED",
                    ):  # fmt: skip
                        time.sleep(0.005)
                    seen = time.perf_counter() - started
                    if index < 5 or body["state"] != "COMPLETED":
                        continue  # warm-up (first parse, first streams)
                    [fragment] = body["fragments"]
                    whole = body["updated_at"] - body["created_at"]
                    run = fragment["end"] - fragment["start"]
                    total.append(1000 * whole)
                    execute.append(1000 * run)
                    orchestration.append(1000 * (whole - run))
                    client.append(1000 * seen)
        finally:
            node.kill()
            coordinator.terminate()
    print(f"\n{len(total)} Bell jobs (1000 shots), one at a time, 1 ideal node, loopback\n")
    print("| ms | p50 | p95 | max |\n|---|---|---|---|")
    print(f"| total (stored -> COMPLETED) | {quantiles(total)} |")
    print(f"| EXECUTE round trip (Aer run inside) | {quantiles(execute)} |")
    print(f"| orchestration = total - execute | {quantiles(orchestration)} |")
    print(f"| client: POST -> COMPLETED seen | {quantiles(client)} |")


if __name__ == "__main__":
    main()
