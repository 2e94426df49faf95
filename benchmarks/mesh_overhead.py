"""Mesh part 2: orchestration overhead per remote fragment, excluding simulation, on a
three-fragment DAG with state hand-off (the seed's NFR: P95 <= 300 ms; qtask's target 30 ms).

    PYTHONPATH=src:tests .venv/bin/python benchmarks/mesh_overhead.py [-n 30] [--qubits 8]

A `qtask coordinator` (planner hook `mesh_plans:split_halves`: two parallel halves handed on as
statevectors and joined by a third fragment that samples the counts) and three ideal `qtask
node`s (2 halves' widths and one join width) on loopback; N jobs one after another through the
FR-009 API. From each finished job's metadata, per fragment:
- round trip: RESERVE request out -> reply, plus EXECUTE request out -> reply (the coordinator's
  clock), state persisted beside the database included;
- sim: the node's own Aer time for the slice (`run_s` in its reply);
- overhead = round trip - sim: framing, JSON and base64 of the states, libp2p, the node's
  queueing and child-process hop, the coordinator's database writes and state file fsync.
And per job: wall (stored -> COMPLETED) - the critical path's sim (max of the halves + join),
divided by the 3 fragments. Prints a markdown table; never asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from meshcoord import CoordinatorProcess  # noqa: E402
from meshkit import node_process, start_all  # noqa: E402
from summary import quantiles  # noqa: E402


def circuit(qubits: int) -> str:
    """Entangled halves, then a layer across them, then measure all."""
    half = qubits // 2
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];", f"creg c[{qubits}];"]
    for start, stop in ((0, half), (half, qubits)):
        lines.append(f"h q[{start}];")
        lines += [f"cx q[{q}],q[{q + 1}];" for q in range(start, stop - 1)]
        lines += [f"ry({0.1 * (q + 1)}) q[{q}];" for q in range(start, stop)]
    lines += [f"cx q[{q}],q[{q + 1}];" for q in range(qubits - 1)]
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--qubits", type=int, default=8)
    args = parser.parse_args()
    qasm = circuit(args.qubits)
    env = {
        "QTASK_MESH__COORDINATOR__PLANNER_HOOK": "mesh_plans:split_halves",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        coordinator = CoordinatorProcess(root / "coordinator", env).start()
        half = args.qubits - args.qubits // 2
        nodes = start_all([
            node_process(root / "nodes", name, bootstrap=[coordinator.addr], max_qubits=width)
            for name, width in (("a", half), ("b", half), ("c", args.qubits))
        ])  # fmt: skip
        try:
            with httpx.Client(base_url=coordinator.url, timeout=30) as http:
                while len(http.get("/api/v1/nodes", params={"available": "true"}).json()[
                        "nodes"]) < 3:  # fmt: skip
                    time.sleep(0.05)
                per_fragment: list[float] = []
                per_job: list[float] = []
                reserve: list[float] = []
                execute: list[float] = []
                sims: list[float] = []
                state_kib: list[float] = []
                for index in range(args.n + 3):
                    job_id = http.post("/api/v1/circuits/submit",
                                       json={"qasm": qasm, "shots": 1000, "seed": 1}
                                       ).json()["job_id"]  # fmt: skip
                    while (body := http.get(f"/api/v1/jobs/{job_id}").json())["state"] not in (
                        "COMPLETED", "FAILED"):  # fmt: skip
                        time.sleep(0.005)
                    if body["state"] != "COMPLETED":
                        raise SystemExit(f"job failed: {body.get('error')}")
                    if index < 3:
                        continue  # warm-up: first dials, first runs in each child
                    meta = body["metadata"]
                    run = {t["fragment_id"]: t for t in meta["transfers"]}
                    for hop in meta["route"]:
                        sim = run[hop["fragment_id"]]["run_ms"]
                        per_fragment.append(hop["reserve_ms"] + hop["execute_ms"] - sim)
                        reserve.append(hop["reserve_ms"])
                        execute.append(hop["execute_ms"] - sim)
                        sims.append(sim)
                    state_kib += [
                        t["bytes_out"] / 1024 for t in meta["transfers"] if t["bytes_out"]
                    ]
                    ids = sorted(run)
                    critical = max(run[ids[0]]["run_ms"], run[ids[1]]["run_ms"]) + run[ids[2]][
                        "run_ms"]  # fmt: skip
                    wall = (body["updated_at"] - body["created_at"]) * 1000
                    per_job.append((wall - critical) / len(ids))
        finally:
            for node in nodes:
                node.terminate(timeout=10)
            coordinator.terminate(timeout=10)
    kib = statistics.median(state_kib)
    print(f"\n{args.n} jobs, {args.qubits} qubits, 3 fragments each (halves in parallel, "
          f"statevector hand-off of {kib:.1f} KiB base64 per half)\n")  # fmt: skip
    print("| per remote fragment (ms) | p50 | p95 | max |")
    print("|---|---|---|---|")
    print(
        f"| overhead: RESERVE + EXECUTE round trips - node's Aer time | {quantiles(per_fragment)} |"
    )
    print(f"| of which RESERVE, records included | {quantiles(reserve)} |")
    print(f"| of which EXECUTE - Aer (state kept, attempt recorded) | {quantiles(execute)} |")
    print(f"| node's Aer time (excluded) | {quantiles(sims)} |")
    print(f"| job wall - critical path's Aer time, / 3 fragments | {quantiles(per_job)} |")


if __name__ == "__main__":
    main()
