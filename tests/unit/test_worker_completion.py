"""Who completed a task: of all runs of one task, exactly one stores the completed transition and
logs `completed`; every other run logs `discarded`. Checked with the in-memory store and a fake
pool standing in for child processes."""

from __future__ import annotations

import asyncio

import orjson
import structlog.testing

from qtask.config import WorkerSettings
from qtask.domain.ports import Delivery
from qtask.domain.task import Status
from qtask.execution.items import RunItem, RunOutcome
from qtask.testing import InMemoryObjectStore, InMemoryTaskStore
from qtask.worker.runner import Worker
from qtask_testkit import OnceQueue, make_task


class _Acks:
    """Wraps deliveries to say when `expected` of them were acknowledged."""

    def __init__(self, expected: int) -> None:
        self.left = expected
        self.all_done = asyncio.Event()

    def wrap(self, delivery: Delivery) -> Delivery:
        acks = self

        class Counted:
            task = delivery.task

            async def ack(self) -> None:
                await delivery.ack()
                acks.left -= 1
                if acks.left == 0:
                    acks.all_done.set()

            async def nak(self) -> None:
                await delivery.nak()

            async def in_progress(self) -> None:
                await delivery.in_progress()

        return Counted()


class _Pool:
    """Each run of an item gets other counts (the first all "00", then "01", ...); remembers how
    many runs it made."""

    size = 1

    def __init__(self) -> None:
        self.runs = 0

    async def call(self, items: list[RunItem], timeout: float) -> list[RunOutcome]:
        outcomes = []
        for item in items:
            outcomes.append(RunOutcome(item.task_id, counts={f"{self.runs:02b}": item.shots}))
            self.runs += 1
        return outcomes

    async def close(self) -> None:
        return None


async def test_a_duplicate_run_that_finishes_second_is_logged_discarded() -> None:
    # A redelivery after a lost ack: the task is handed out twice (attempts 1 and 2).
    store = InMemoryTaskStore()
    objects = InMemoryObjectStore()
    task = await store.create(make_task(result_object="results/x.json"))
    [first] = await store.fetch(1, timeout=0)
    store.expire_lease(task.id)
    [second] = await store.fetch(1, timeout=0)
    assert (first.task.attempts, second.task.attempts) == (1, 2)
    acks = _Acks(2)
    pool = _Pool()
    settings = WorkerSettings(processes=1, max_attempts=3, task_timeout_s=5.0, batch_size=8)
    worker = Worker(
        store,
        OnceQueue([acks.wrap(first), acks.wrap(second)]),
        pool,  # type: ignore[arg-type]
        settings,
        worker_id="w-7",
        objects=objects,
    )
    with structlog.testing.capture_logs() as logs:
        worker.start()
        try:
            await asyncio.wait_for(acks.all_done.wait(), 5)
        finally:
            await worker.stop(grace=1.0)
    assert pool.runs == 2
    lines = [entry for entry in logs if entry["event"] == "task_finished"]
    assert sorted(line["outcome"] for line in lines) == ["completed", "discarded"]
    [completed] = [line for line in lines if line["outcome"] == "completed"]
    done = store.tasks[task.id]
    assert done.status is Status.COMPLETED
    # The store names the one run that completed it, as its log line does.
    assert (done.completed_by, done.completed_attempt) == ("w-7", completed["attempts"])
    assert worker.completed == 1
    # The discarded duplicate did not delete the result object the completed record points to,
    # and what the object says is the stored (first) result, not the duplicate's.
    stored = orjson.loads(objects.objects["results/x.json"])
    assert stored["result"] == done.result
    assert stored["attempts"] == done.completed_attempt
