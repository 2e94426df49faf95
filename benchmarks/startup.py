"""Start-up time: how soon a new process can serve.

    .venv/bin/python benchmarks/startup.py [--trials 5]

- `qtask serve` (embedded, 2 worker processes): process start → `/ready` answers 200.
- `qtask worker --workers 1` joining a running distributed deployment (Redis, NATS, S3, API
  and poller already up) while a Bell task waits in the queue: process start → the worker's
  `/ready` answers 200, and process start → that waiting task's result is visible.

Prints the median and the worst of `--trials` runs of each. Never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import BELL, ServerProcess
from servers import DistributedDeployment


def _poll(check: object, timeout: float = 60.0) -> float:
    """Call `check` every 5 ms until it is true; return the time it became true."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return time.perf_counter()
        time.sleep(0.005)
    raise RuntimeError("timed out")


def embedded_trials(trials: int, root: Path) -> list[float]:
    """Seconds from starting `qtask serve` to its /ready answering 200."""
    times = []
    for trial in range(trials):
        server = ServerProcess(root / f"serve-{trial}", workers=2)
        started = time.perf_counter()
        server.start()  # returns once /ready answers 200 (polled every 50 ms)
        times.append(time.perf_counter() - started)
        server.terminate()
    return times


def worker_trials(trials: int, root: Path) -> tuple[list[float], list[float]]:
    """Seconds from starting a worker to its /ready, and to a waiting task's result."""
    deployment = DistributedDeployment(root / "distributed", workers=0)
    ready, first = [], []
    try:
        deployment.start()
        with httpx.Client(base_url=deployment.url, timeout=10) as client:
            for _ in range(trials):
                task_id = client.post("/tasks", json={"qc": BELL}).json()["task_id"]
                time.sleep(0.5)  # the task is queued in NATS, and nobody takes it
                started = time.perf_counter()
                worker = deployment.add_worker()
                health = f"http://127.0.0.1:{worker.env['QTASK_WORKER__HEALTH_PORT']}/ready"

                def task_done(task_id: str = task_id) -> bool:
                    body = client.get(f"/tasks/{task_id}").json()
                    return bool(body["status"] != "pending")

                ready_at = _poll(lambda url=health: httpx.get(url, timeout=1).status_code == 200)
                done_at = _poll(task_done)
                ready.append(ready_at - started)
                first.append(done_at - started)
                worker.terminate()
                deployment.workers.remove(worker)
    finally:
        deployment.terminate()
    return ready, first


def main() -> None:
    """Run the trials and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qtask-startup-"))
    serve = embedded_trials(args.trials, root)
    ready, first = worker_trials(args.trials, root)
    print(f"\n## Start-up, {args.trials} trials each (seconds)\n")
    print("| what | median | worst |")
    print("|---|---|---|")
    for label, values in (
        ("`qtask serve` start → /ready (2 worker processes)", serve),
        ("`qtask worker` start → its /ready", ready),
        ("`qtask worker` start → a waiting task's result visible", first),
    ):
        print(f"| {label} | {statistics.median(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
