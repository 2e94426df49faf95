"""A distributed worker takes a task as soon as it is published, even when it is idle.

nats-py keeps a batch pull open until the batch is full or the pull's deadline passes, so a
worker fetching 64 at a time with a 1 s timeout held a lone task that arrived just after its
pull began for the rest of that second: measured, one Bell task in 100-200 at light load (in 5
of 6 runs of 300 tasks). The queue now pulls one message, then the batch its metadata says is
waiting (adapters/nats_queue.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from qtask_testkit import BELL
from servers import DistributedDeployment

TASKS = 400
# Far above a task's usual wait for its worker (2-5 ms here), far below the 1 s fetch deadline.
STALL_S = 0.5


def _queue_waits(deployment: DistributedDeployment) -> dict[str, float]:
    """Each finished task's queue wait, from the workers' task_finished lines."""
    waits = {}
    for worker in deployment.workers:
        for line in worker.log().splitlines():
            if line.startswith("{") and '"task_finished"' in line:
                record = json.loads(line)
                waits[record["task_id"]] = record["queue_wait_s"]
    return waits


def test_tasks_submitted_one_at_a_time_never_wait_for_a_fetch_deadline(tmp_path: Path) -> None:
    deployment = DistributedDeployment(tmp_path / "d")
    deployment.start()
    try:
        ids = []
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            for _ in range(TASKS):
                task_id = client.post("/tasks", json={"qc": BELL}).json()["task_id"]
                deadline = time.monotonic() + 30
                while client.get(f"/tasks/{task_id}").json()["status"] == "pending":
                    assert time.monotonic() < deadline, f"task {task_id} still pending"
                    time.sleep(0.002)
                ids.append(task_id)
        # A task's line is written just after its result is stored: the last may still come.
        deadline = time.monotonic() + 10
        while (waits := _queue_waits(deployment)).keys() != set(ids):
            assert time.monotonic() < deadline, f"lines missing for {set(ids) - waits.keys()}"
            time.sleep(0.05)
        stalled = sorted(round(wait, 3) for wait in waits.values() if wait > STALL_S)
        assert not stalled, f"queue waits over {STALL_S} s: {stalled} of {TASKS} tasks"
    finally:
        deployment.terminate()
