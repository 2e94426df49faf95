"""The retention pass: ended tasks and their objects go once they are old enough, nothing else."""

from __future__ import annotations

import time

from qtask.application.retention import Retention
from qtask.domain.task import Status
from qtask.testing import InMemoryObjectStore, InMemoryTaskStore
from qtask_testkit import make_task


async def test_old_ended_tasks_and_their_objects_are_removed() -> None:
    store, objects = InMemoryTaskStore(), InMemoryObjectStore()
    now = time.time()
    old_done = make_task(
        status=Status.COMPLETED,
        result={"0": 1},
        finished_at=now - 100,
        circuit_object="circuits/ab/old.qasm",
        result_object="results/ab/old.json",
    )
    old_failed = make_task(status=Status.FAILED, error="broke", finished_at=now - 50)
    recent = make_task(status=Status.COMPLETED, result={"0": 1}, finished_at=now - 1,
                       circuit_object="circuits/cd/new.qasm")  # fmt: skip
    old_but_queued = make_task(created_at=now - 1000, circuit_object="circuits/ef/q.qasm")
    await store.create_many([old_done, old_failed, recent, old_but_queued])
    for key in ("circuits/ab/old.qasm", "results/ab/old.json", "circuits/cd/new.qasm",
                "circuits/ef/q.qasm"):  # fmt: skip
        await objects.put(key, b"x")
    retention = Retention(store, objects, keep_s=10, interval=60)

    assert await retention.run_once() == 2
    assert set(store.tasks) == {recent.id, old_but_queued.id}
    assert sorted(objects.objects) == ["circuits/cd/new.qasm", "circuits/ef/q.qasm"]
    assert await retention.run_once() == 0
    assert retention.removed == 2


async def test_a_backlog_drains_in_bounded_batches() -> None:
    store = InMemoryTaskStore()
    old = time.time() - 100
    await store.create_many(
        [make_task(status=Status.FAILED, error="x", finished_at=old) for _ in range(1200)]
    )
    assert await Retention(store, None, keep_s=1, interval=60).run_once() == 1200
    assert store.tasks == {}
