"""Long polls (GET /tasks/{id}?wait=S): what 1,000 waiting clients cost one API process, how
other requests fare meanwhile, and how soon a waiter hears that its task ended.

    .venv/bin/python benchmarks/longpoll.py [--waiters 1000] [--requests 500]
        [--deployment distributed embedded] [--load burst paced] [--rate 100] [--runs 1]

distributed: Redis + NATS + S3 with `qtask api` and no worker, so the tasks stay queued and
cost no CPU while the waiters wait. embedded: `qtask serve` with one worker process, which a
slow circuit (~10 s) occupies while the waiters connect (simulating meanwhile).
Two shapes of load once all of them wait:
- burst: every task ends as fast as the machine can run them (distributed: a `qtask worker` is
  started; embedded: the slow circuit ends and the queued Bell tasks run), so worker, Redis,
  API and the 1,000-connection client all want the 2 cores at once.
- paced: the tasks end at `--rate` per second while the others still wait: the client cancels
  them one by one (DELETE /tasks/{id}, which ends a task through the same store write and end
  notice as a worker's result). Embedded, `qtask serve`'s child processes (the worker busy
  with the slow circuit, the parsers) are stopped (SIGSTOP) meanwhile, so that only the
  waiting costs CPU, as in distributed mode.
A waiter's latency is from the task's `finished_at` (as the store recorded it) to the moment
the client has the answer: the Redis notice (distributed), the API's re-read and HTTP included.
Distributed, it is split in two at the moment a subscriber in a process of its own received
the task's notice: end -> notice (the store's write and PUBLISH) + notice -> answer (the API's
wake-up, batched re-read and response, and the client reading it).
CPU columns: seconds of CPU per second of wall time (100 % = one core) from the first answer
to the last, of the client (this process: waiters, pacing and all) and of the API process; and
how busy the machine's cores were meanwhile (every process on it, other users' included:
100 % = all cores busy).

Memory is the API process's resident set (VmRSS, the parser processes not counted) before the
waiters connect and once all of them wait (the `qtask_long_polls` gauge). "Other requests":
sequential GET /tasks/{id} (no wait) on a new connection, before and while the waiters wait.
Client and server share the machine's cores. Prints a markdown table; asserts nothing on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import BELL, ServerProcess, slow_circuit
from servers import DistributedDeployment

WAIT_S = 60
# A subscriber of the end notices in a process of its own (distributed mode): when each id's
# notice reached a Redis subscriber splits end -> answer into the notice and the API's part.
NOTICE_LISTENER = """
import sys, time, redis
pubsub = redis.Redis.from_url(sys.argv[1]).pubsub()
pubsub.subscribe(sys.argv[2])
with open(sys.argv[3], "w", buffering=1) as out:
    for message in pubsub.listen():
        if message["type"] == "subscribe":
            out.write("subscribed\\n")
        elif message["type"] == "message":
            at = time.time()
            out.writelines(f"{at!r} {i}\\n" for i in message["data"].decode().split(","))
"""


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (children, theirs, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def machine_busy() -> tuple[float, float]:
    """Busy and total jiffies of all cores so far (/proc/stat), every process included."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert found is not None
    return int(found.group(1)) / 1024


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def waiting(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    found = re.search(r"^qtask_long_polls (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


async def other_requests(url: str, task_id: str, count: int) -> list[float]:
    """Latencies (ms) of `count` sequential plain reads on a connection of their own."""
    times = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for _ in range(count):
            started = time.perf_counter()
            response = await http.get(f"/tasks/{task_id}")
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return times


async def end_paced(url: str, ids: list[str], rate: float) -> None:
    """Cancel the tasks one by one at `rate` per second, on a connection of its own."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for n, task_id in enumerate(ids):
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            response = await http.delete(f"/tasks/{task_id}")
            response.raise_for_status()


async def measure(
    url: str,
    pid: int,
    ids: list[str],
    requests: int,
    release: Callable[[], Awaitable[None]],
) -> dict[str, object]:
    """Connect one long poll per id, measure, await `release()` (which makes the tasks end),
    and collect each answer's arrival time."""
    answered: dict[str, float] = {}
    marks: list[float] = []
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S + 30):
        await other_requests(url, ids[0], 50)  # warm-up
        before_ms = await other_requests(url, ids[0], requests)
        rss_before = rss_mib(pid)

        async def wait_one(task_id: str) -> None:
            # One connection per waiter, HTTP/1.1 by hand: httpx's pool costs O(connections)
            # per response, which at 1,000 connections measured the client, not the server.
            reader, writer = await asyncio.open_connection(host, int(port))
            request = f"GET /tasks/{task_id}?wait={WAIT_S} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            while True:  # again after a wait that ran out (a slow machine), on the same connection
                writer.write(request.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                assert found is not None
                body = await reader.readexactly(int(found.group(1)))
                if b'"pending"' not in body:
                    break
            answered[task_id] = time.time()
            if not marks:  # the CPU counters at the first answer
                marks.extend([time.monotonic(), sum(os.times()[:2]), cpu_seconds(pid)])
                marks.extend(machine_busy())
            writer.close()
            assert b'"completed"' in body or b"Task was cancelled." in body, body

        tasks = [asyncio.create_task(wait_one(task_id)) for task_id in ids]
        connect_started = time.monotonic()
        async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
            while await waiting(probe) < len(ids):
                await asyncio.sleep(0.1)
                if time.monotonic() - connect_started > WAIT_S / 2:
                    raise RuntimeError("the waiters did not all connect in time")
        connect_s = time.monotonic() - connect_started
        rss_waiting = rss_mib(pid)
        during_ms = await other_requests(url, ids[0], requests)
        rss_after_reads = rss_mib(pid)
        assert not any(task.done() for task in tasks), "a waiter was answered before its end"
        await asyncio.gather(release(), *tasks)
        wall = time.monotonic() - marks[0]
        client_cpu = (sum(os.times()[:2]) - marks[1]) / wall
        api_cpu = (cpu_seconds(pid) - marks[2]) / wall
        busy, total = machine_busy()
        machine = (busy - marks[3]) / (total - marks[4])
    return {
        "client_cpu": client_cpu,
        "api_cpu": api_cpu,
        "machine": machine,
        "answered": answered,
        "before_ms": before_ms,
        "during_ms": during_ms,
        "rss_before": rss_before,
        "rss_waiting": max(rss_waiting, rss_after_reads),
        "connect_s": connect_s,
    }


def submit_all(url: str, count: int) -> list[str]:
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        while len(ids) < count:
            n = min(1000, count - len(ids))
            body = {"tasks": [{"qc": BELL, "shots": 10}] * n}
            response = http.post("/tasks/batch", json=body)
            response.raise_for_status()
            ids += response.json()["task_ids"]
    return ids


def run_distributed(
    directory: Path, waiters: int, requests: int, load: str, rate: float
) -> dict[str, object]:
    deployment = DistributedDeployment(directory, workers=0)
    deployment.start()
    try:
        assert deployment.api is not None
        assert deployment.api.process is not None
        ids = submit_all(deployment.url, waiters)
        notices_file = directory / "notices.txt"
        listen = [sys.executable, "-c", NOTICE_LISTENER, deployment.redis.url, "qtask:ended"]
        listener = subprocess.Popen([*listen, str(notices_file)])
        deadline = time.monotonic() + 30
        while not (notices_file.exists() and notices_file.read_text()):
            assert time.monotonic() < deadline, "the notice listener did not subscribe"
            time.sleep(0.05)

        async def release() -> None:
            if load == "paced":
                await end_paced(deployment.url, ids, rate)
            else:
                await asyncio.to_thread(deployment.add_worker)

        result = asyncio.run(
            measure(deployment.url, deployment.api.process.pid, ids, requests, release)
        )
        import redis

        client = redis.Redis.from_url(deployment.redis.url)
        with client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(f"qtask:task:{task_id}", "finished_at")
            finished = [float(value) for value in pipe.execute()]
        client.close()
        listener.kill()
        listener.wait()
        noticed = {}
        for line in notices_file.read_text().splitlines()[1:]:
            at, task_id = line.split()
            noticed[task_id] = float(at)
        result["noticed"] = noticed
    finally:
        deployment.terminate()
    result["finished"] = dict(zip(ids, finished, strict=True))
    return result


def run_embedded(
    directory: Path, waiters: int, requests: int, load: str, rate: float
) -> dict[str, object]:
    server = ServerProcess(directory / "data", workers=1)
    held: list[int] = []
    server.start()
    try:
        assert server.process is not None
        with httpx.Client(base_url=server.url, timeout=60) as http:
            # One slow circuit holds the only worker process while the waiters connect and
            # the reads are measured; in a burst the Bell tasks run once it is done.
            http.post("/tasks", json={"qc": slow_circuit(23, 30), "shots": 10})
            deadline = time.monotonic() + 60
            while http.get("/metrics").text.find('qtask_tasks{status="running"} 1.0') < 0:
                assert time.monotonic() < deadline, "the slow circuit did not start"
                time.sleep(0.05)
        ids = submit_all(server.url, waiters)
        if load == "paced":
            held = descendants(server.process.pid)
        for pid in held:  # paced: the worker (and parser) processes stop using CPU
            os.kill(pid, signal.SIGSTOP)

        async def release() -> None:
            if load == "paced":
                await end_paced(server.url, ids, rate)

        result = asyncio.run(measure(server.url, server.process.pid, ids, requests, release))
    finally:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.terminate()
    with sqlite3.connect(directory / "data" / "qtask.db") as conn:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT id, finished_at FROM tasks WHERE id IN ({marks})", ids)
        result["finished"] = dict(rows.fetchall())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument(
        "--deployment",
        nargs="+",
        choices=["distributed", "embedded"],
        default=["distributed", "embedded"],
    )
    parser.add_argument("--load", nargs="+", choices=["burst", "paced"], default=["burst", "paced"])
    parser.add_argument("--rate", type=float, default=100.0, help="paced: ends per second")
    parser.add_argument("--runs", type=int, default=1, help="runs of each combination")
    args = parser.parse_args()
    rows = []
    with TemporaryDirectory() as tmp:
        for name in args.deployment:
            for load in args.load:
                for run in range(args.runs):
                    print(f"{name}, {load}: {args.waiters} waiters ...", file=sys.stderr)
                    runner = run_distributed if name == "distributed" else run_embedded
                    directory = Path(tmp) / f"{name}-{load}-{run}"
                    result = runner(directory, args.waiters, args.requests, load, args.rate)
                    rows.append(row(name, load, args.waiters, result))
                    print(rows[-1], file=sys.stderr)
    print(
        "| deployment | load | waiters | API RSS before (MiB) | with waiters (MiB) | Δ (MiB) "
        "| other GETs p50 / p99 before (ms) | p50 / p99 while waiting (ms) "
        "| tasks ended per s | end → answer p50 / p99 / max (ms) "
        "| end → notice + notice → answer p50 / p99 (ms) "
        "| CPU client / API (%) | machine busy (%) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for line in rows:
        print(line)


def row(name: str, load: str, waiters: int, result: dict[str, object]) -> str:
    """One run's line of the table."""
    answered: dict[str, float] = result["answered"]  # type: ignore[assignment]
    finished: dict[str, float] = result["finished"]  # type: ignore[assignment]
    wake = [(answered[i] - finished[i]) * 1000 for i in answered]
    span = max(finished.values()) - min(finished.values())
    rate = len(finished) / span if span > 0 else float("inf")
    before: list[float] = result["before_ms"]  # type: ignore[assignment]
    during: list[float] = result["during_ms"]  # type: ignore[assignment]
    rss_before: float = result["rss_before"]  # type: ignore[assignment]
    rss_waiting: float = result["rss_waiting"]  # type: ignore[assignment]
    client_cpu: float = result["client_cpu"]  # type: ignore[assignment]
    api_cpu: float = result["api_cpu"]  # type: ignore[assignment]
    machine: float = result["machine"]  # type: ignore[assignment]
    noticed: dict[str, float] = result.get("noticed", {})  # type: ignore[assignment]
    split = "–"
    if noticed:
        notice = [(noticed[i] - finished[i]) * 1000 for i in noticed]
        api = [(answered[i] - noticed[i]) * 1000 for i in noticed if i in answered]
        split = (
            f"{quantile(notice, 0.5):.1f} / {quantile(notice, 0.99):.1f}"
            f" + {quantile(api, 0.5):.1f} / {quantile(api, 0.99):.1f}"
        )
    return (
        f"| {name} | {load} | {waiters} | {rss_before:.0f} | {rss_waiting:.0f} "
        f"| {rss_waiting - rss_before:+.1f} "
        f"| {quantile(before, 0.5):.1f} / {quantile(before, 0.99):.1f} "
        f"| {quantile(during, 0.5):.1f} / {quantile(during, 0.99):.1f} "
        f"| {rate:.0f} "
        f"| {statistics.median(wake):.1f} / {quantile(wake, 0.99):.1f} / {max(wake):.1f} "
        f"| {split} | {100 * client_cpu:.0f} / {100 * api_cpu:.0f} | {100 * machine:.0f} |"
    )


if __name__ == "__main__":
    main()
