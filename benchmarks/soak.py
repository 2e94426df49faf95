"""Memory over many tasks: does any role's resident memory grow with the number of tasks run?

    .venv/bin/python benchmarks/soak.py [--tasks 100000] [--deployment embedded|distributed]

Starts one deployment (benchmarks/deployments.py), drives Bell tasks through it in batches
(`POST /tasks/batch`, polled with `GET /tasks?ids=`) and, after every `--checkpoint` tasks,
reads each process's RSS. It prints one row per checkpoint and, at the end, the growth of each
role between the first checkpoint (the caches are warm by then) and the last. It never asserts:
a leak shows as steady growth across rows, not as one number.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import deployments
import loadgen
import workloads
from deployments import rss_kib


def role_rss_mib(deployment: deployments.Deployment) -> dict[str, tuple[float, float]]:
    """Each role's (summed RSS, largest single process RSS) in MiB."""
    found = {}
    for role, pids in deployment.pids().items():
        sizes = [rss_kib(pid) / 1024 for pid in pids]
        found[role] = (sum(sizes), max(sizes, default=0.0))
    return found


def main() -> None:
    """Run the soak and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--checkpoint", type=int, default=10_000, help="tasks between readings")
    parser.add_argument("--deployment", choices=["embedded", "distributed"], default="embedded")
    parser.add_argument("--batch", type=int, default=100, help="circuits per POST /tasks/batch")
    parser.add_argument("--concurrency", type=int, default=1000, help="tasks outstanding")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds in all")
    args = parser.parse_args()

    deployment = deployments.make(args.deployment)
    rows = []
    started = time.monotonic()
    try:
        print(f"starting {args.deployment}", file=sys.stderr)
        deployment.start()
        done = 0
        rows.append((0, 0.0, None, role_rss_mib(deployment)))
        while done < args.tasks and time.monotonic() - started < args.budget:
            count = min(args.checkpoint, args.tasks - done)
            load = loadgen.run_load(
                deployment.url,
                [workloads.BELL] * count,
                concurrency=args.concurrency,
                poll_interval=0.02,
                budget_s=args.budget - (time.monotonic() - started),
                client="raw",
                batch=args.batch,
            )
            done += load.completed + load.failed
            rows.append(
                (done, time.monotonic() - started, load.throughput, role_rss_mib(deployment))
            )
            print(f"{done} tasks, {load.throughput or 0:.0f}/s", file=sys.stderr)
            if load.budget_hit:
                break
    finally:
        deployment.stop()
        shutil.rmtree(deployment.root, ignore_errors=True)

    print(f"\n## Memory over {rows[-1][0]} Bell tasks ({args.deployment})\n")
    print(
        "| tasks done | elapsed s | tasks/s (this stretch) | front RSS MiB | workers RSS MiB "
        "(sum / largest process) |"
    )
    print("|---|---|---|---|---|")
    for tasks, elapsed, rate, rss in rows:
        front, workers = rss["front"], rss["workers"]
        print(
            f"| {tasks} | {elapsed:.0f} | {'–' if rate is None else f'{rate:.0f}'} "
            f"| {front[0]:.0f} | {workers[0]:.0f} / {workers[1]:.0f} |"
        )
    if len(rows) >= 3:
        first, last = rows[1][3], rows[-1][3]
        print(
            f"\nGrowth from {rows[1][0]} to {rows[-1][0]} tasks: front "
            f"{last['front'][0] - first['front'][0]:+.1f} MiB, workers "
            f"{last['workers'][0] - first['workers'][0]:+.1f} MiB (sum), largest worker process "
            f"{last['workers'][1] - first['workers'][1]:+.1f} MiB."
        )


if __name__ == "__main__":
    main()
