"""The bucket layout (qtask.domain.object_keys) on a real SQLite store and a real local object
store: new tasks move from the pending to the completed area; tasks and objects a version
before the areas wrote (`circuits/`, `results/`) still run and read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from qtask.adapters.objects import ObjectStoreAdapter, open_object_store
from qtask.adapters.sqlite_store import SQLiteTaskStore
from qtask.api.app import create_app
from qtask.application.service import TaskService
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings, WorkerSettings
from qtask.domain.object_keys import circuit_key, result_key
from qtask.domain.task import Status, Task
from qtask.execution.catalog import aer_only
from qtask.execution.items import RunItem, RunOutcome
from qtask.worker.runner import Worker
from qtask_testkit import BELL, make_task

SETTINGS = WorkerSettings(processes=1, max_attempts=3, task_timeout_s=10.0, batch_size=8)


class AnsweringPool:
    """Stands in for the child processes: every shot reads "11"."""

    size = 1

    async def call(self, items: list[RunItem], timeout: float) -> list[RunOutcome]:
        return [
            RunOutcome(
                item.task_id,
                counts={"11": item.shots},
                memory=["11"] * item.shots if item.memory else None,
            )
            for item in items
        ]

    async def close(self) -> None:
        return None


@dataclass
class Deployment:
    root: Path
    store: SQLiteTaskStore
    objects: ObjectStoreAdapter
    service: TaskService

    def files(self) -> list[str]:
        """Every object's key, as the directory holds them."""
        return sorted(
            str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file()
        )

    async def run_until_ended(self, *task_ids: str) -> None:
        worker = Worker(self.store, self.store, AnsweringPool(), SETTINGS, objects=self.objects)  # type: ignore[arg-type]
        worker.start()
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not all([await self._ended(task_id) for task_id in task_ids]):
                assert asyncio.get_running_loop().time() < deadline, "tasks did not end"
                await asyncio.sleep(0.02)
        finally:
            await worker.stop(grace=1.0)

    async def _ended(self, task_id: str) -> bool:
        task = await self.store.get(task_id)
        return task is not None and task.status.terminal


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    root = tmp_path / "objects"
    root.mkdir()
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    objects = open_object_store(str(root))
    limits = LimitsSettings()
    service = TaskService(
        store, store, CircuitIngestor(limits, pool=None), limits, objects, backends=aer_only(limits)
    )
    yield Deployment(root, store, objects, service)
    await objects.close()
    await store.close()


async def test_a_completed_task_moves_from_the_pending_to_the_completed_area(
    deployment: Deployment,
) -> None:
    app = create_app(deployment.service, max_body_bytes=1 << 16)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/tasks", json={"qc": BELL, "shots": 4, "memory": True})
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        shard = task_id[:2]
        assert deployment.files() == [f"pending/{shard}/{task_id}.qasm"]
        stored = await deployment.store.get(task_id)
        assert stored is not None
        assert (stored.circuit_object, stored.result_object) == (
            circuit_key(task_id),
            result_key(task_id),
        )

        await deployment.run_until_ended(task_id)
        assert deployment.files() == [f"completed/{shard}/{task_id}.json"]
        document = orjson.loads((deployment.root / result_key(task_id)).read_bytes())
        assert document["circuit"] == BELL
        assert document["result"] == {"11": 4}
        body = (await c.get(f"/tasks/{task_id}")).json()
    assert body == {"status": "completed", "result": {"11": 4}, "memory": ["11"] * 4}


async def test_a_failed_task_keeps_its_circuit_in_the_pending_area(
    deployment: Deployment,
) -> None:
    app = create_app(deployment.service, max_body_bytes=1 << 16)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        task_id = (await c.post("/tasks", json={"qc": BELL})).json()["task_id"]
        assert (await c.delete(f"/tasks/{task_id}")).status_code == 200
    assert deployment.files() == [f"pending/{task_id[:2]}/{task_id}.qasm"]


async def test_tasks_and_objects_the_previous_layout_wrote_still_run_and_read(
    deployment: Deployment,
) -> None:
    """A store as a version before the areas left it: records naming `circuits/` and
    `results/` keys, one task still queued and one completed with its per-shot results in
    its result object."""

    def legacy(area: str, task: Task, suffix: str) -> str:
        return f"{area}/{task.id[:2]}/{task.id}{suffix}"

    queued = make_task(shots=3)
    queued = make_task(
        id=queued.id,
        shots=3,
        circuit_object=legacy("circuits", queued, ".qasm"),
        result_object=legacy("results", queued, ".json"),
    )
    done = make_task(shots=2, memory=True)
    done = make_task(
        id=done.id,
        shots=2,
        memory=True,
        circuit_object=legacy("circuits", done, ".qasm"),
        result_object=legacy("results", done, ".json"),
    )
    for task in (queued, done):
        assert task.circuit_object is not None
        await deployment.objects.put(task.circuit_object, task.source.encode())
        await deployment.store.create(task)
    assert done.result_object is not None
    await deployment.objects.put(
        done.result_object, orjson.dumps({"result": {"01": 2}, "memory": ["01", "01"]})
    )
    await deployment.store.complete(done.id, {"01": 2})
    before = deployment.files()

    await deployment.run_until_ended(queued.id)
    ran = await deployment.store.get(queued.id)
    assert ran is not None
    assert (ran.status, ran.result) == (Status.COMPLETED, {"11": 3})
    assert queued.result_object is not None
    # Its result went where its record says; its old circuit object is left alone.
    assert deployment.files() == sorted([*before, queued.result_object])
    written = orjson.loads((deployment.root / queued.result_object).read_bytes())
    assert written["result"] == {"11": 3}

    read = await deployment.service.read(done.id)
    assert (read.status, read.result, read.per_shot) == (
        Status.COMPLETED,
        {"01": 2},
        ["01", "01"],
    )
