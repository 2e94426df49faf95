"""NATS loses its stream under the real roles (`qtask api`, `worker`, `poller` processes): every
task Redis holds as queued or running is published again and completes, with one result."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import nats
import pytest

from qtask_testkit import BELL, slow_circuit, submit, wait_done
from servers import DistributedDeployment


@pytest.fixture
def deployment(tmp_path: Path) -> DistributedDeployment:
    """A fresh deployment with one worker."""
    return DistributedDeployment(tmp_path / "d", workers=1)


def delete_stream(url: str) -> None:
    async def delete() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().delete_stream("QTASK")
        await nc.close()

    asyncio.run(delete())


def wait_status(deployment: DistributedDeployment, task_id: str, status: str) -> None:
    deadline = time.monotonic() + 60
    while deployment.stored_status(task_id) != status:
        assert time.monotonic() < deadline, f"{task_id} never {status}"
        time.sleep(0.05)


def completions(deployment: DistributedDeployment) -> Counter[str]:
    """How many times each task was recorded as completed, from every role's JSON log."""
    found: Counter[str] = Counter()
    for line in deployment.log().splitlines():
        if '"task_finished"' not in line:
            continue
        event = json.loads(line)
        if event.get("outcome") == "completed":
            found[event["task_id"]] += 1
    return found


def test_deleted_stream_queued_and_orphaned_running_tasks_complete_once(
    deployment: DistributedDeployment,
) -> None:
    deployment.start()
    try:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            orphan = submit(client, slow_circuit(20, 10))
            wait_status(deployment, orphan, "running")
            deployment.workers[0].kill()  # its running task now has no worker
            queued = [submit(client, BELL) for _ in range(10)]

            delete_stream(deployment.nats.url)
            lost_at = time.monotonic()
            deployment.add_worker()

            for task_id in [orphan, *queued]:
                body = wait_done(client, task_id, timeout=90)
                assert body["status"] == "completed", (task_id, body)
            print(f"all 11 tasks completed {time.monotonic() - lost_at:.1f} s after the loss")
        # A worker logs `task_finished` just after storing the result clients read: wait for it.
        deadline = time.monotonic() + 10
        while set(completions(deployment)) != {orphan, *queued} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert completions(deployment) == Counter({t: 1 for t in [orphan, *queued]})
        assert '"stream_lost"' in deployment.log()
    finally:
        deployment.terminate()
