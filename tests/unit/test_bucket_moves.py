"""The worker's side of the bucket's move (qtask.domain.object_keys), over in-memory fakes: a crash
between the completed record and the delete of the pending circuit is cleaned up by the
redelivery it causes, without running the task again."""

from __future__ import annotations

import asyncio
import time

from qtask.config import WorkerSettings
from qtask.domain.object_keys import circuit_key, result_key
from qtask.domain.task import Status
from qtask.execution.items import RunItem, RunOutcome
from qtask.testing import InMemoryDelivery, InMemoryObjectStore, InMemoryTaskStore
from qtask.worker.runner import Worker
from qtask_testkit import BELL, OnceQueue, make_task

SETTINGS = WorkerSettings(processes=1, max_attempts=3, task_timeout_s=5.0, batch_size=8)


class CountingPool:
    size = 1

    def __init__(self) -> None:
        self.runs = 0

    async def call(self, items: list[RunItem], timeout: float) -> list[RunOutcome]:
        self.runs += len(items)
        return [RunOutcome(item.task_id, counts={"00": item.shots}) for item in items]

    async def close(self) -> None:
        return None


async def test_a_redelivery_of_a_completed_task_deletes_its_leftover_pending_circuit() -> None:
    store, objects = InMemoryTaskStore(), InMemoryObjectStore()
    task = make_task()
    task = await store.create(
        make_task(
            id=task.id, circuit_object=circuit_key(task.id), result_object=result_key(task.id)
        )
    )
    await objects.put(circuit_key(task.id), BELL.encode())
    await store.fetch(1, timeout=0)
    # The first run stored its result object and record, then its worker died before the
    # delete and the ack: the queue delivers the task again, as the store now has it.
    await objects.put(result_key(task.id), b'{"result": {"00": 100}}')
    await store.complete(task.id, {"00": 100})
    redelivery = InMemoryDelivery(store, store.tasks[task.id])
    pool = CountingPool()
    worker = Worker(store, OnceQueue([redelivery]), pool, SETTINGS, objects=objects)  # type: ignore[arg-type]
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while not redelivery.acked:
            assert time.monotonic() < deadline, "the redelivery was not settled"
            await asyncio.sleep(0.01)
    finally:
        await worker.stop(grace=1.0)
    assert pool.runs == 0
    assert list(objects.objects) == [result_key(task.id)]
    assert store.tasks[task.id].status is Status.COMPLETED
