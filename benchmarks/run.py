"""qtask's benchmark suite: throughput and latency of each workload against bare Qiskit Aer.

One command runs everything and prints markdown tables (progress goes to stderr):

    .venv/bin/python benchmarks/run.py [--quick] [--deployment embedded|distributed|both]
                                       [--workload NAME ...]

For each workload it first runs the bare-Aer reference (benchmarks/reference.py, in a
subprocess, while no server is up), then, for each deployment (benchmarks/deployments.py), it
starts qtask, warms it up, times Bell tasks one at a time (the light-load row) and drives each
workload with the closed-loop load generator (benchmarks/loadgen.py). Every workload has a time
budget; the script reports what finished and never asserts on time. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deployments
import loadgen
import reference
import workloads
from deployments import ROLES, ResourceSampler, Usage

WARMUP_TASKS = 20


@dataclass(slots=True)
class Row:
    """One line of the results table."""

    deployment: str
    workload: str
    load: loadgen.LoadResult
    usage: Usage
    bare: dict[str, Any] | None
    large: bool
    light: bool = False
    left_running: int = 0


@dataclass(slots=True)
class DeploymentReport:
    """Start-up time and peak memory of one deployment over the whole run."""

    name: str
    startup_s: float | None = None
    usage: Usage = field(default_factory=Usage)
    error: str | None = None


def log(message: str) -> None:
    """Progress, on stderr so stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for the table, or a dash."""
    return "–" if value is None else f"{value:.{digits}f}"


def run_references(
    chosen: list[workloads.Workload], light: list[str], budget: float, workdir: Path
) -> dict[str, dict[str, Any] | None]:
    """The bare-Aer timings of every workload (and the sequential light row), by name."""
    bare: dict[str, dict[str, Any] | None] = {}
    log(f"bare Aer: {len(light)} Bell circuits one at a time")
    bare["light"] = reference.measure_in_subprocess(light, False, workdir, budget, True)
    for workload in chosen:
        log(f"bare Aer: {workload.name} ({len(workload.sources)} circuits, one batched run)")
        bare[workload.name] = reference.measure_in_subprocess(
            workload.sources, workload.large, workdir, budget
        )
    return bare


def run_deployment(
    name: str,
    chosen: list[workloads.Workload],
    light: list[str],
    bare: dict[str, dict[str, Any] | None],
    args: argparse.Namespace,
) -> tuple[DeploymentReport, list[Row]]:
    """Start one deployment, run the light row and every workload, stop it."""
    report = DeploymentReport(name)
    rows: list[Row] = []
    deployment = deployments.make(name, workers=args.workers, objects=not args.no_objects)
    try:
        log(f"{name}: starting")
        report.startup_s = deployment.start()
        log(f"{name}: ready in {report.startup_s:.2f} s; warming up")
        loadgen.run_load(
            deployment.url,
            light[:WARMUP_TASKS],
            concurrency=1,
            poll_interval=0.001,
            client=args.client,
        )

        log(f"{name}: light load, {len(light)} Bell tasks one at a time")
        with ResourceSampler(deployment) as sampler:
            load = loadgen.run_load(
                deployment.url,
                light,
                concurrency=1,
                poll_interval=0.001,
                budget_s=args.budget,
                client=args.client,
            )
        report.usage.merge_peaks(sampler.usage)
        rows.append(Row(name, "bell 1-at-a-time", load, sampler.usage, bare["light"], False, True))

        for workload in chosen:
            log(f"{name}: {workload.name}, {len(workload.sources)} tasks")
            with ResourceSampler(deployment) as sampler:
                load = loadgen.run_load(
                    deployment.url,
                    workload.sources,
                    concurrency=args.concurrency,
                    poll_interval=args.poll_interval,
                    budget_s=args.budget,
                    client=args.client,
                    batch=args.batch,
                    wait_s=args.wait,
                )
            report.usage.merge_peaks(sampler.usage)
            row = Row(name, workload.name, load, sampler.usage, bare[workload.name], workload.large)
            rows.append(row)
            log(
                f"{name}: {workload.name}: {load.completed}/{load.tasks} completed, "
                f"{fmt(load.throughput)} tasks/s" + (" (budget hit)" if load.budget_hit else "")
            )
            if sampler.usage.infra_cpu_s:
                split = ", ".join(f"{k} {v:.1f}" for k, v in sampler.usage.infra_cpu_s.items())
                log(f"{name}: {workload.name}: infra CPU s: {split}")
            for sample in load.error_samples:
                log(f"{name}: {workload.name}: {sample}")
            if load.outstanding:  # let the next workload start on an idle service
                log(f"{name}: waiting for the {len(load.outstanding)} tasks left running")
                row.left_running = loadgen.drain(deployment.url, load.outstanding, args.budget)
    except Exception as exc:  # report what was measured so far, and why the rest is missing
        report.error = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        log(f"{name}: failed: {report.error}")
    finally:
        log(f"{name}: stopping")
        deployment.stop()
        if report.error is None:
            shutil.rmtree(deployment.root, ignore_errors=True)
        else:
            log(f"{name}: logs and data kept in {deployment.root}")
    return report, rows


def row_cells(row: Row) -> list[str]:
    """The cells of one results row."""
    load, bare = row.load, row.bare
    bare_rate = None
    if bare is not None and bare["total_s"] > 0:
        bare_rate = bare["tasks"] / bare["total_s"]
    rate = load.throughput
    if row.light and load.latencies:  # one at a time: the rate is 1 / mean latency
        rate = len(load.latencies) / sum(load.latencies)
    ratio = rate / bare_rate if rate and bare_rate else None
    service_s = bare_s = total_ratio = None
    if row.large:
        service_s = load.span_s
        bare_s = bare["total_s"] if bare is not None else None
        total_ratio = service_s / bare_s if service_s and bare_s else None
    done = load.completed + load.failed
    status = f"{load.completed}/{load.tasks}"
    if load.budget_hit:
        status += f" (budget; {row.left_running} left)" if row.left_running else " (budget)"
    errors = load.failed + load.http_errors
    cpu = "/".join(fmt(row.usage.cpu_s[role]) for role in ROLES) + f"/{fmt(load.client_cpu_s)}"
    qtask_rss = row.usage.peak_rss_mib["front"] + row.usage.peak_rss_mib["workers"]
    return [
        row.deployment,
        row.workload,
        status,
        str(errors),
        fmt(rate, 1),
        fmt(bare_rate, 1),
        fmt(ratio, 2),
        fmt(load.percentile_ms(50)),
        fmt(load.percentile_ms(95)),
        fmt(load.percentile_ms(99)),
        fmt(load.polls / done if done else None),
        fmt(service_s, 2),
        fmt(bare_s, 2),
        fmt(total_ratio, 2),
        cpu,
        fmt(qtask_rss, 0),
    ]


HEADERS = [
    "deployment",
    "workload",
    "done",
    "errors",
    "qtask tasks/s",
    "bare-Aer tasks/s",
    "qtask/bare",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "polls/task",
    "service s",
    "bare-Aer s",
    "service/bare",
    "CPU s front/workers/infra/client",
    "peak RSS MiB",
]


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line about where this ran."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, qtask @ {rev}"


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; skips random22")
    parser.add_argument("--deployment", choices=["embedded", "distributed", "both"], default="both")
    parser.add_argument(
        "--workload", nargs="+", choices=workloads.NAMES, help="default: all (see --quick)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="tasks outstanding at once")
    parser.add_argument("--poll-interval", type=float, default=0.005, help="seconds")
    parser.add_argument(
        "--wait",
        type=float,
        help="long-poll the workloads' tasks (GET ...&wait=S) instead of polling them",
    )
    parser.add_argument(
        "--client",
        choices=list(loadgen.CLIENTS),
        default="httpx",
        help="httpx.AsyncClient, or a minimal asyncio HTTP/1.1 client with ~1/10 the CPU cost",
    )
    parser.add_argument("--budget", type=float, help="seconds per workload (default 300, 120)")
    parser.add_argument(
        "--no-objects",
        action="store_true",
        help="distributed without an object store (results in Redis only): qtask without S3",
    )
    parser.add_argument("--tasks", type=int, help="tasks per workload (default: its own size)")
    parser.add_argument("--light", type=int, help="one-at-a-time Bell tasks (default 200, 50)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes / workers")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="circuits per POST /tasks/batch, polled with GET /tasks?ids= (1: POST /tasks each)",
    )
    args = parser.parse_args()
    if args.budget is None:
        args.budget = 120.0 if args.quick else 300.0
    if args.light is None:
        args.light = 50 if args.quick else 200
    return args


def main() -> None:
    """Run the references, then every deployment; print the tables."""
    args = parse_args()
    names = args.workload or [
        n for n in workloads.NAMES if not (args.quick and n in workloads.SKIPPED_IN_QUICK)
    ]
    chosen = [workloads.build(name, args.quick, args.tasks) for name in names]
    light = [workloads.BELL] * args.light
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="qtask-bench-"))
    bare = run_references(chosen, light, args.budget, workdir)
    shutil.rmtree(workdir, ignore_errors=True)

    reports: list[DeploymentReport] = []
    rows: list[Row] = []
    targets = ["embedded", "distributed"] if args.deployment == "both" else [args.deployment]
    for name in targets:
        report, deployment_rows = run_deployment(name, chosen, light, bare, args)
        reports.append(report)
        rows += deployment_rows

    print(f"\n## qtask benchmarks{' (--quick)' if args.quick else ''}\n")
    print(machine())
    print(
        f"{args.workers} workers; {args.client} client; "
        + (f"batches of {args.batch}; " if args.batch > 1 else "")
        + ("distributed without an object store; " if args.no_objects else "")
        + f"{args.concurrency} tasks outstanding, "
        f"polled every {args.poll_interval * 1000:g} ms; {workloads.SHOTS} shots; "
        f"budget {args.budget:g} s per workload; total run {time.monotonic() - started:.0f} s\n"
    )
    for workload in chosen:
        print(f"- `{workload.name}`: {len(workload.sources)} × {workload.description}")
    print(f"- `bell 1-at-a-time`: {args.light} Bell tasks, each polled every 1 ms\n")
    print(table(HEADERS, [row_cells(row) for row in rows]))
    print()
    summary = []
    for report in reports:
        usage = report.usage
        summary.append(
            [
                report.name,
                fmt(report.startup_s, 2),
                "/".join(fmt(usage.peak_rss_mib[role], 0) for role in ROLES),
                "/".join(fmt(usage.peak_pss_mib[role], 0) for role in ROLES),
                report.error or "",
            ]
        )
    print(
        table(
            [
                "deployment",
                "start-up s (start → ready)",
                "peak RSS MiB front/workers/infra",
                "peak PSS MiB front/workers/infra",
                "error",
            ],
            summary,
        )
    )


if __name__ == "__main__":
    main()
