"""The per-request path: one Bell circuit per `POST /tasks`, read back with `GET /tasks/{id}`.

    .venv/bin/python benchmarks/per_request.py [--tasks 3000] [--concurrency 64]
        [--poll-interval 0.01] [--light 200] [--workers 2] [--no-wait]

What most clients do, measured against bare Aer in the same run (issue 15):

1. bare Aer: the same Bell sources parsed and run in one batched `AerSimulator.run` in a
   subprocess (benchmarks/reference.py); its CPU seconds from `getrusage`, per circuit.
2. `qtask serve` (embedded, `--workers` worker processes), warmed up, then:
   - light load: `--light` tasks one at a time, each polled every 1 ms: submit-to-result
     p50/p99 (and once more with a long poll, `?wait=`);
   - load: `--tasks` tasks, `--concurrency` clients each submitting one task and polling it
     every `--poll-interval` s; the service's CPU (every process of its process group, read
     from /proc) per task, the client's own CPU kept out;
   - the same load with long-polling clients (`GET /tasks/{id}?wait=20`), unless `--no-wait`.

The ratio is bare Aer's CPU per circuit over the service's CPU per task (1.0: the service
costs no more than Aer alone). This VM's speed drifts by tens of percent within minutes, so a
loaded row runs in `--bursts` bursts, each right after a bare-Aer run of as many circuits (the
server idle meanwhile): its ratio is the median of the bursts' own ratios, each listed under
the table. The client is the benchmarks' raw HTTP/1.1 client. Prints a markdown table; asserts
nothing on time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import deployments
import loadgen
import reference
import workloads
from deployments import ResourceSampler

WARMUP_TASKS = 50
READS = 5000  # GETs of one completed task, for the API's CPU per plain read
LONG_POLL_S = 20.0  # under the raw client's 30 s read timeout


def log(message: str) -> None:
    """Progress, on stderr so stdout holds only the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for the table, or a dash."""
    return "–" if value is None else f"{value:.{digits}f}"


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="tasks in the loaded rows")
    parser.add_argument("--concurrency", type=int, default=64, help="clients, one task each")
    parser.add_argument("--poll-interval", type=float, default=0.01, help="seconds")
    parser.add_argument("--light", type=int, default=200, help="one-at-a-time tasks")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per row")
    parser.add_argument("--bursts", type=int, default=3, help="bursts per loaded row")
    parser.add_argument("--no-wait", action="store_true", help="skip the long-polling rows")
    return parser.parse_args()


def main() -> None:
    """Bare Aer, then the service; print one table."""
    args = parse_args()
    sources = [workloads.BELL] * args.tasks
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="qtask-bench-"))
    log(f"bare Aer: {args.tasks} Bell circuits, one batched run")
    bare = reference.measure_in_subprocess(sources, False, workdir, args.budget)
    shutil.rmtree(workdir, ignore_errors=True)
    bare_ms = 1000 * bare["cpu_s"] / bare["tasks"] if bare else None

    rows: list[list[str]] = []
    burst_notes: list[str] = []
    deployment = deployments.make("embedded", workers=args.workers)
    try:
        log(f"embedded: ready in {deployment.start():.2f} s; warming up")
        loadgen.run_load(deployment.url, sources[:WARMUP_TASKS], concurrency=1, client="raw")
        polls: list[tuple[str, float | None]] = [("polling", None)]
        if not args.no_wait:
            polls.append(("long poll", LONG_POLL_S))
        log(f"{READS} reads of a completed task, 8 at a time")
        with ResourceSampler(deployment) as sampler:
            asyncio.run(_reads(deployment.url, READS, 8))
        read_ms = 1000 * sampler.usage.cpu_s["front"] / READS
        for style, wait_s in polls:
            log(f"light load, {style}: {args.light} tasks one at a time")
            with ResourceSampler(deployment) as sampler:
                light = loadgen.run_load(
                    deployment.url,
                    sources[: args.light],
                    concurrency=1,
                    poll_interval=0.001,
                    budget_s=args.budget,
                    client="raw",
                    wait_s=wait_s,
                )
            rows.append(row(f"1 at a time, {style}", light, sampler.usage.cpu_s, bare_ms))
        for style, wait_s in polls:
            name = f"{args.concurrency} clients, {style}"
            cells, ratios = loaded_row(name, deployment, sources, args, wait_s)
            rows.append(cells)
            burst_notes.append(f"{name}: " + ", ".join(fmt(r) for r in ratios))
    finally:
        deployment.stop()
        shutil.rmtree(deployment.root, ignore_errors=True)

    print("\n## qtask per-request path (embedded)\n")
    print(
        f"{time.strftime('%Y-%m-%d')}; {args.workers} workers; raw client; Bell, "
        f"{workloads.SHOTS} shots; loaded rows poll every {args.poll_interval * 1000:g} ms, "
        f"light rows every 1 ms; long polls `?wait={LONG_POLL_S:g}`; "
        f"total run {time.monotonic() - started:.0f} s\n"
    )
    print(f"bare Aer, batched (for the light rows): {fmt(bare_ms, 3)} ms CPU per circuit")
    print(f"API process CPU per GET /tasks/{{id}} of a completed task: {fmt(read_ms, 3)} ms\n")
    headers = [
        "row",
        "done",
        "errors",
        "tasks/s",
        "p50 ms",
        "p99 ms",
        "requests/task",
        "CPU ms/task front+workers",
        "service CPU ms/task",
        "bare Aer/service",
        "client CPU ms/task",
    ]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print("\nloaded rows, bare Aer/service of each burst (after its own bare-Aer run):")
    for note in burst_notes:
        print(f"- {note}")


def loaded_row(
    name: str,
    deployment: deployments.Deployment,
    sources: list[str],
    args: argparse.Namespace,
    wait_s: float | None,
) -> tuple[list[str], list[float]]:
    """One loaded row, run in bursts each after a bare-Aer run of its size: the row's cells
    (its ratio the median of the bursts') and each burst's ratio."""
    size = max(1, len(sources) // args.bursts)
    merged = loadgen.LoadResult(tasks=0)
    cpu = {"front": 0.0, "workers": 0.0}
    ratios: list[float] = []
    for burst in range(args.bursts):
        workdir = Path(tempfile.mkdtemp(prefix="qtask-bench-"))
        bare = reference.measure_in_subprocess(sources[:size], False, workdir, args.budget)
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"{name}: burst {burst + 1}/{args.bursts}, {size} tasks")
        with ResourceSampler(deployment) as sampler:
            load = loadgen.run_load(
                deployment.url,
                sources[:size],
                concurrency=args.concurrency,
                poll_interval=args.poll_interval,
                budget_s=args.budget,
                client="raw",
                wait_s=wait_s,
            )
        for sample in load.error_samples:
            log(f"{name}: {sample}")
        done = load.completed + load.failed
        spent = sampler.usage.cpu_s["front"] + sampler.usage.cpu_s["workers"]
        if bare and done and spent:
            ratios.append((bare["cpu_s"] / bare["tasks"]) / (spent / done))
        for role in cpu:
            cpu[role] += sampler.usage.cpu_s[role]
        _merge(merged, load)
    median = statistics.median(ratios) if ratios else None
    return row(name, merged, cpu, None, ratio=median), ratios


def _merge(total: loadgen.LoadResult, part: loadgen.LoadResult) -> None:
    """Add one burst's counts to `total`; throughput then spans the bursts' own spans."""
    total.tasks += part.tasks
    total.completed += part.completed
    total.failed += part.failed
    total.http_errors += part.http_errors
    total.polls += part.polls
    total.latencies += part.latencies
    total.client_cpu_s += part.client_cpu_s
    if part.span_s is not None:  # the spans laid end to end, from 0
        total.first_submit = 0.0
        total.last_done = (total.last_done or 0.0) + part.span_s


async def _reads(url: str, count: int, concurrency: int) -> None:
    """Submit one task, wait for it, then read it `count` times, `concurrency` at a time."""
    transport = loadgen.RawTransport(url, concurrency)
    try:
        _, body = await transport.post_task(workloads.BELL)
        task_id = body["task_id"]
        while (await transport.get_task(task_id, LONG_POLL_S))[1]["status"] == "pending":
            pass

        async def reader(n: int) -> None:
            for _ in range(n):
                status, _ = await transport.get_task(task_id)
                assert status == 200

        await asyncio.gather(*(reader(count // concurrency) for _ in range(concurrency)))
    finally:
        await transport.aclose()


def row(
    name: str,
    load: loadgen.LoadResult,
    cpu: dict[str, float],
    bare_ms: float | None,
    *,
    ratio: float | None = None,
) -> list[str]:
    """One table row: latency, and CPU per task (`cpu`: seconds by role) against bare Aer's
    (`ratio`, when given, is the row's bare Aer / service instead: a loaded row's median)."""
    done = load.completed + load.failed
    per = (lambda seconds: 1000 * seconds / done) if done else (lambda _: None)
    service_ms = per(cpu["front"] + cpu["workers"])
    if ratio is None and bare_ms and service_ms:
        ratio = bare_ms / service_ms
    return [
        name,
        f"{load.completed}/{load.tasks}",
        str(load.failed + load.http_errors),
        fmt(load.throughput, 0),
        fmt(load.percentile_ms(50)),
        fmt(load.percentile_ms(99)),
        fmt(1 + load.polls / done if done else None, 2),
        f"{fmt(per(cpu['front']))}+{fmt(per(cpu['workers']))}",
        fmt(service_ms),
        fmt(ratio),
        fmt(per(load.client_cpu_s)),
    ]


if __name__ == "__main__":
    main()
