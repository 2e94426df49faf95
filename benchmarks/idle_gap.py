"""What an idle gap before a piece of work costs on this machine (issue 15's light-load rows).

    .venv/bin/python benchmarks/idle_gap.py [--runs 300] [--gaps 0 0.5 2 10]

One task at a time, every step of a task (the POST's parse, the child's Aer run, the commit,
the answer) starts right after its process or thread slept, waiting on another. On a machine
whose idle cores lose their caches (a VM whose host runs others meanwhile), the same work then
costs more CPU than back to back, and the one-at-a-time latency pays that at every step. This
measures it on two pieces of a task's real work, in one process, each preceded by a sleep of
`gap` milliseconds (0: back to back):

- `api work`: what the API does for a Bell submission, in process: the circuit's admission
  check (`circuits.ingest`) and the JSON of its answer;
- `aer run`: a worker child's run of one Bell circuit, 1,024 shots (`execution.aer.run_items`,
  one thread, as in a child).

CPU is this thread's (`time.thread_time`), so the sleep itself is not counted. Prints a
markdown table: the median CPU per piece after each gap, and its ratio to back to back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask.circuits.ingest import Limits, ingest
from qtask.execution import aer
from qtask_testkit import BELL, run_item

LIMITS = Limits(
    max_circuit_bytes=64 << 10, max_qubits=20, max_operations=1000, max_statevector_bytes=64 << 20
)


def api_work() -> None:
    """The API's own work for one Bell submission (without its HTTP and store)."""
    ingest(BELL, LIMITS)
    json.dumps({"task_id": "0" * 32, "message": "Task submitted successfully."})


def cpu_after_gaps(work: Callable[[], None], gap_s: float, runs: int) -> float:
    """Median CPU seconds of `work`, each run after sleeping `gap_s`."""
    spent = []
    for _ in range(runs):
        if gap_s:
            time.sleep(gap_s)
        started = time.thread_time()
        work()
        spent.append(time.thread_time() - started)
    return statistics.median(spent)


def main() -> None:
    """Measure each piece after each gap, alternating gaps round by round; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per piece and gap")
    parser.add_argument("--gaps", type=float, nargs="+", default=[0, 0.5, 2, 10], help="ms")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the gaps")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    aer.init_process(1, 1024)
    item = run_item("bell", BELL, LIMITS, shots=1024)

    def aer_run() -> None:
        aer.run_items([item])

    pieces: dict[str, Callable[[], None]] = {"api work": api_work, "aer run": aer_run}
    for work in pieces.values():  # warm
        cpu_after_gaps(work, 0, 20)
    per_round = max(args.runs // args.rounds, 1)
    medians: dict[tuple[str, float], list[float]] = {}
    for _ in range(args.rounds):  # the VM drifts: each gap is measured in every round
        for gap in args.gaps:
            for name, work in pieces.items():
                medians.setdefault((name, gap), []).append(
                    cpu_after_gaps(work, gap / 1000, per_round)
                )
    print(f"## CPU after an idle gap ({time.strftime('%Y-%m-%d')}, {args.runs} runs each)\n")
    print("| piece | " + " | ".join(f"gap {gap:g} ms" for gap in args.gaps) + " |")
    print("|---|" + "---|" * len(args.gaps))
    for name in pieces:
        base = statistics.median(medians[(name, args.gaps[0])])
        cells = []
        for gap in args.gaps:
            value = statistics.median(medians[(name, gap)])
            cells.append(f"{value * 1e6:.0f} µs ({value / base:.2f}×)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
