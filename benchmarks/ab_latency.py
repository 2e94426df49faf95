"""Light-load latency of two source trees, side by side: `qtask serve` from each, tasks alternated.

    .venv/bin/python benchmarks/ab_latency.py OLD_SRC NEW_SRC [-n 1500] [--gap-ms 2]

Starts one embedded `qtask serve` per source tree (each with PYTHONPATH set to it, e.g. a
`git worktree` of the old commit's `src` and this checkout's `src`), warms both up, then submits
Bell tasks one at a time, alternating between the two servers task by task (the order swapped
every other pair), each read with a long poll (`?wait=20`), `--gap-ms` apart. Both servers see
the same machine at the same moments, so a difference of a few tenths of a millisecond shows
through drift that moves whole runs by more (this VM's speed changes by tens of percent within
minutes). Prints submit → result p50/p90/p99/mean per tree; asserts nothing on time.

With `--bursts K` it then measures the loaded per-request cost the same way: K bursts per tree
of `--burst-tasks` Bell tasks from 64 long-polling clients, the trees' bursts alternated (the
order swapped every other pair), each server's CPU (its whole process group, from /proc) per
task; prints the median and range per tree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import deployments
import loadgen
import workloads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import ServerProcess

WARMUP_TASKS = 100
LONG_POLL_S = 20.0


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs=2, type=Path, help="two source directories (src)")
    parser.add_argument("-n", type=int, default=1500, help="tasks per tree")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="pause between tasks")
    parser.add_argument("--bursts", type=int, default=0, help="loaded bursts per tree")
    parser.add_argument("--burst-tasks", type=int, default=600, help="tasks per burst")
    return parser.parse_args()


async def one_task(transport: loadgen.RawTransport) -> float:
    """Submit one Bell task and long-poll it; the seconds from submit to result."""
    started = time.perf_counter()
    status, body = await transport.post_task(workloads.BELL)
    if status != 202:
        raise RuntimeError(f"POST answered {status}: {body}")
    while True:
        status, body = await transport.get_task(str(body["task_id"]), LONG_POLL_S)
        if status != 200:
            raise RuntimeError(f"GET answered {status}: {body}")
        if body["status"] != "pending":
            return time.perf_counter() - started


async def alternate(urls: list[str], count: int, gap_s: float) -> list[list[float]]:
    """Latencies (ms) per server, `count` each after the warm-up, tasks alternated."""
    transports = [loadgen.RawTransport(url, 1) for url in urls]
    latencies: list[list[float]] = [[] for _ in urls]
    try:
        for index in range(WARMUP_TASKS + count):
            order = (0, 1) if index % 2 else (1, 0)
            for which in order:
                seconds = await one_task(transports[which])
                if index >= WARMUP_TASKS:
                    latencies[which].append(1000 * seconds)
                await asyncio.sleep(gap_s)
    finally:
        for transport in transports:
            await transport.aclose()
    return latencies


def group_cpu_s(leader: int) -> float:
    """CPU seconds of every live process in `leader`'s process group."""
    return sum(deployments.cpu_seconds(pid) or 0.0 for pid in deployments.group_pids(leader))


def loaded_bursts(servers: list[ServerProcess], bursts: int, tasks: int) -> list[list[float]]:
    """Service CPU ms per task of each burst, per server, bursts alternated."""
    costs: list[list[float]] = [[] for _ in servers]
    sources = [workloads.BELL] * tasks
    for index in range(bursts):
        order = (0, 1) if index % 2 else (1, 0)
        for which in order:
            server = servers[which]
            assert server.process is not None
            before = group_cpu_s(server.process.pid)
            result = loadgen.run_load(
                server.url, sources, concurrency=64, client="raw", wait_s=LONG_POLL_S
            )
            spent = group_cpu_s(server.process.pid) - before
            done = result.completed + result.failed
            costs[which].append(1000 * spent / max(1, done))
    return costs


def percentile(sorted_ms: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted sample lies."""
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * fraction))]


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="qtask-ab-"))
    servers = []
    try:
        for index, tree in enumerate(args.trees):
            server = ServerProcess(root / f"data{index}", env={"PYTHONPATH": str(tree.resolve())})
            server.start()
            servers.append(server)
        latencies = asyncio.run(
            alternate([server.url for server in servers], args.n, args.gap_ms / 1000)
        )
        costs = loaded_bursts(servers, args.bursts, args.burst_tasks) if args.bursts else None
    finally:
        for server in servers:
            server.terminate()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n## Light-load latency, A/B ({time.strftime('%Y-%m-%d')}, {args.n} tasks each)\n")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}\n")
    print("| tree | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    for tree, sample in zip(args.trees, latencies, strict=True):
        ms = sorted(sample)
        print(
            f"| {tree} | {percentile(ms, 0.5):.2f} | {percentile(ms, 0.9):.2f} | "
            f"{percentile(ms, 0.99):.2f} | {statistics.mean(ms):.2f} |"
        )

    if costs is not None:
        print(
            f"\n## Loaded, {args.bursts} bursts of {args.burst_tasks} tasks per tree, "
            "64 long-polling clients\n"
        )
        print("| tree | service CPU ms/task, median | min | max |")
        print("|---|---|---|---|")
        for tree, burst_costs in zip(args.trees, costs, strict=True):
            print(
                f"| {tree} | {statistics.median(burst_costs):.2f} | {min(burst_costs):.2f} | "
                f"{max(burst_costs):.2f} |"
            )


if __name__ == "__main__":
    main()
