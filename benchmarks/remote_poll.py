"""One poller pass over 10,000 outstanding remote jobs on a real remote qtask (federation).

Starts a real `qtask serve` (B, 1 worker process) in a temporary directory unless --url is
given, submits N Bell tasks to it (batches of 1,000, each with an Idempotency-Key, as A's
worker does), and builds A's side in this process: a SQLite task store in a temporary
directory holding N running tasks, each with a remote job record naming its task on B. Then it
times passes of the real RemotePoller with the real `qtask` backend (httpx): pass 1 with B's
worker processes stopped (SIGSTOP; every job still pending at B, so each is rescheduled), then,
B's workers resumed, passes until every task on A has completed (results written, tasks
completed, job records forgotten). Prints status calls and seconds per pass.
Run: .venv/bin/python benchmarks/remote_poll.py [-n 10000] [--url http://host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask.adapters.sqlite_remote import SQLiteRemoteJobs
from qtask.adapters.sqlite_store import SQLiteTaskStore
from qtask.application.poller import RemotePoller
from qtask.config import LimitsSettings
from qtask.config_backends import QtaskBackendSettings
from qtask.domain.remote import RemoteJob
from qtask.domain.task import Status, Task, new_task_id
from qtask.execution.remote_qtask import QtaskRemoteBackend
from qtask_testkit import BELL, BELL_INFO, ServerProcess


def submit_to_b(url: str, tasks: list[Task]) -> list[str]:
    """B's task ids, in order."""
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(tasks), 1000):
            chunk = tasks[start : start + 1000]
            response = client.post(
                "/tasks/batch",
                json={"tasks": [{"qc": BELL, "shots": 100} for _ in chunk]},
                headers={"Idempotency-Key": f"bench-{chunk[0].id}"},
            )
            response.raise_for_status()
            ids += response.json()["task_ids"]
    return ids


def signal_workers(server: ServerProcess | None, sig: signal.Signals) -> None:
    """Stop or resume B's child processes (its API keeps answering)."""
    if server is None or server.process is None:
        return
    for pid in server.group_alive():
        if pid != server.process.pid:
            os.kill(pid, sig)


async def measure(url: str, count: int, data: Path, server: ServerProcess | None) -> None:
    tasks = [
        Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=100, backend="remote")
        for _ in range(count)
    ]
    started = time.perf_counter()
    remote_ids = submit_to_b(url, tasks)
    signal_workers(server, signal.SIGSTOP)
    print(f"submitted {count} tasks to B in {time.perf_counter() - started:.1f} s")
    store = SQLiteTaskStore(data / "qtask.db")
    jobs = SQLiteRemoteJobs(store.db)
    await store.create_many(tasks)
    await store.fetch(count, timeout=0)
    now = time.time()
    for task, remote_id in zip(tasks, remote_ids, strict=True):
        await jobs.record(RemoteJob(task.id, "remote", remote_id, now, now))
    settings = QtaskBackendSettings(type="qtask", url=url, poll_interval_s=0.5)
    backend = QtaskRemoteBackend("remote", settings, LimitsSettings())
    poller = RemotePoller(store, jobs, {"remote": backend})
    print(
        f"{'pass':>4} {'claimed':>8} {'status calls':>12} {'completed':>9} "
        f"{'rescheduled':>11} {'seconds':>8}"
    )
    for number in range(1, 1000):
        if number == 2:
            signal_workers(server, signal.SIGCONT)
        began = time.perf_counter()
        report = await poller.run_once()
        seconds = time.perf_counter() - began
        if report.claimed:
            print(
                f"{number:>4} {report.claimed:>8} {report.status_calls:>12} "
                f"{report.completed:>9} {report.rescheduled:>11} {seconds:>8.2f}"
            )
        counts = await store.counts()
        if counts.get(Status.COMPLETED.value, 0) == count:
            break
        await asyncio.sleep(1.0)
    await backend.close()
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--url")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        url = args.url
        if url is None:
            server = ServerProcess(Path(tmp) / "b", workers=1)
            server.start()
            url = server.url
        try:
            asyncio.run(measure(url, args.n, Path(tmp), server))
        finally:
            if server is not None:
                server.terminate()


if __name__ == "__main__":
    main()
