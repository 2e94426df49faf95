"""An upgrade under the real roles: tasks that a qtask from before the listings stored in Redis
(hashes with no listing entries) are listed by `GET /tasks` once the new processes start."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import httpx
import redis

from qtask.adapters.redis_hash import to_hash
from qtask.domain.task import Status
from qtask_testkit import make_task
from servers import DistributedDeployment


def test_tasks_stored_before_the_listings_are_listed_after_an_upgrade(tmp_path: Path) -> None:
    deployment = DistributedDeployment(tmp_path / "d", workers=0)
    old = [make_task(created_at=time.time() - 60 + i) for i in range(5)]
    old[0] = replace(old[0], status=Status.COMPLETED, result={"00": 100}, finished_at=1.0)
    deployment.redis.start()
    client = redis.Redis.from_url(deployment.redis.url)
    try:
        for task in old:  # the old create script's HSET: no backend field, no listing entries
            fields = to_hash(task)
            at = fields.index("backend")
            del fields[at : at + 2]
            client.hset(
                f"qtask:task:{task.id}", mapping=dict(zip(fields[::2], fields[1::2], strict=True))
            )
        deployment.start()
        expected = [task.id for task in reversed(old)]
        with httpx.Client(base_url=deployment.url, timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:  # the first reconciler pass (API and poller alike) runs the backfill
                listed = http.get("/tasks", params={"limit": 50}).json()
                if [item["task_id"] for item in listed["tasks"]] == expected:
                    break
                assert time.monotonic() < deadline, listed
                time.sleep(0.1)
            statuses = [item["status"] for item in listed["tasks"]]
            assert statuses == ["pending"] * 4 + ["completed"]
            done = http.get("/tasks", params={"status": "completed"}).json()
            assert [item["task_id"] for item in done["tasks"]] == [old[0].id]
        assert client.exists("qtask:marker:listing_index") == 1
    finally:
        client.close()
        deployment.terminate()
