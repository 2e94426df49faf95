"""Long polls (GET /tasks/{id}?wait=S): what 1,000 waiting clients cost one API process, how
other requests fare meanwhile, and how soon a waiter hears that its task ended.

    .venv/bin/python benchmarks/longpoll.py [--waiters 1000] [--requests 500]
        [--deployment distributed embedded]

distributed: Redis + NATS + S3 with `qtask api` and no worker, so the tasks stay queued and
cost no CPU while the waiters wait; a `qtask worker` is then started and runs them. A waiter's
latency is from the task's `finished_at` (stored by the worker, in another process) to the
moment the client has the answer: the Redis notice, the API's re-read and HTTP included.
embedded: `qtask serve` with one worker process; a slow circuit occupies it while the waiters
connect, then the queued Bell tasks run; `finished_at` is read from the SQLite file.

Memory is the API process's resident set (VmRSS, the parser processes not counted) before the
waiters connect and once all of them wait (the `qtask_long_polls` gauge). "Other requests":
sequential GET /tasks/{id} (no wait) on a new connection, before and while the waiters wait.
Client and server share the machine's cores. Prints a markdown table; asserts nothing on time.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import BELL, ServerProcess, slow_circuit
from servers import DistributedDeployment

WAIT_S = 60


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


async def measure(
    url: str,
    pid: int,
    ids: list[str],
    requests: int,
    release: object,
) -> dict[str, object]:
    """Connect one long poll per id, measure, call `release()` (which makes the tasks end),
    and collect each answer's arrival time."""
    answered: dict[str, float] = {}
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
            writer.close()
            assert b'"completed"' in body, body

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
        await asyncio.to_thread(release)  # type: ignore[arg-type]
        await asyncio.gather(*tasks)
    return {
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


def run_distributed(directory: Path, waiters: int, requests: int) -> dict[str, object]:
    deployment = DistributedDeployment(directory, workers=0)
    deployment.start()
    try:
        assert deployment.api is not None
        assert deployment.api.process is not None
        ids = submit_all(deployment.url, waiters)
        result = asyncio.run(
            measure(
                deployment.url, deployment.api.process.pid, ids, requests, deployment.add_worker
            )
        )
        import redis

        client = redis.Redis.from_url(deployment.redis.url)
        with client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(f"qtask:task:{task_id}", "finished_at")
            finished = [float(value) for value in pipe.execute()]
        client.close()
    finally:
        deployment.terminate()
    result["finished"] = dict(zip(ids, finished, strict=True))
    return result


def run_embedded(directory: Path, waiters: int, requests: int) -> dict[str, object]:
    server = ServerProcess(directory / "data", workers=1)
    server.start()
    try:
        assert server.process is not None
        with httpx.Client(base_url=server.url, timeout=60) as http:
            # One slow circuit (~10 s here) holds the only worker process while the waiters
            # connect and the reads are measured; the Bell tasks run once it is done.
            http.post("/tasks", json={"qc": slow_circuit(23, 30), "shots": 10})
            deadline = time.monotonic() + 60
            while http.get("/metrics").text.find('qtask_tasks{status="running"} 1.0') < 0:
                assert time.monotonic() < deadline, "the slow circuit did not start"
                time.sleep(0.05)
        ids = submit_all(server.url, waiters)

        result = asyncio.run(measure(server.url, server.process.pid, ids, requests, lambda: None))
    finally:
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
    args = parser.parse_args()
    rows = []
    with TemporaryDirectory() as tmp:
        for name in args.deployment:
            print(f"{name}: {args.waiters} waiters ...", file=sys.stderr)
            runner = run_distributed if name == "distributed" else run_embedded
            result = runner(Path(tmp) / name, args.waiters, args.requests)
            answered: dict[str, float] = result["answered"]  # type: ignore[assignment]
            finished: dict[str, float] = result["finished"]  # type: ignore[assignment]
            wake = [(answered[i] - finished[i]) * 1000 for i in answered]
            span = max(finished.values()) - min(finished.values())
            rate = len(finished) / span if span > 0 else float("inf")
            before: list[float] = result["before_ms"]  # type: ignore[assignment]
            during: list[float] = result["during_ms"]  # type: ignore[assignment]
            rss_before: float = result["rss_before"]  # type: ignore[assignment]
            rss_waiting: float = result["rss_waiting"]  # type: ignore[assignment]
            rows.append(
                f"| {name} | {args.waiters} | {rss_before:.0f} | {rss_waiting:.0f} "
                f"| {rss_waiting - rss_before:+.1f} "
                f"| {quantile(before, 0.5):.1f} / {quantile(before, 0.99):.1f} "
                f"| {quantile(during, 0.5):.1f} / {quantile(during, 0.99):.1f} "
                f"| {rate:.0f} "
                f"| {statistics.median(wake):.1f} / {quantile(wake, 0.99):.1f} / {max(wake):.1f} |"
            )
    print(
        "| deployment | waiters | API RSS before (MiB) | with waiters (MiB) | Δ (MiB) "
        "| other GETs p50 / p99 before (ms) | p50 / p99 while waiting (ms) "
        "| tasks ended per s | end → answer p50 / p99 / max (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
