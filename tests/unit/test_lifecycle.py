"""The lifecycle rules (qtask.domain.lifecycle): attempts, requeues and deliveries."""

from __future__ import annotations

import pytest

from qtask.domain.lifecycle import (
    ATTEMPT_PER_START,
    Redelivery,
    Requeue,
    Status,
    attempts_after_release,
    attempts_after_start,
    given_up_message,
    on_delivery,
    startable,
)
from qtask.domain.task import Status as TaskStatus
from qtask.testing import InMemoryTaskStore
from qtask_testkit import make_task


def test_task_module_re_exports_the_one_status() -> None:
    assert TaskStatus is Status


def test_a_start_counts_one_attempt_on_top_of_the_stored_ones() -> None:
    assert ATTEMPT_PER_START == 1
    assert attempts_after_start(0) == 1
    assert attempts_after_start(2) == 3


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status.QUEUED, True),
        (Status.RUNNING, True),
        (Status.COMPLETED, False),
        (Status.FAILED, False),
    ],
)
def test_only_unfinished_tasks_are_startable(status: Status, expected: bool) -> None:
    assert startable(status) is expected


def test_only_a_shutdown_refunds_the_attempt() -> None:
    assert not Requeue.SHUTDOWN.penalizes
    assert Requeue.CRASHED.penalizes
    assert Requeue.BATCH_TIMED_OUT.penalizes
    assert attempts_after_release(2, penalize=False) == 1
    assert attempts_after_release(2, penalize=True) == 2
    assert attempts_after_release(0, penalize=False) == 0


@pytest.mark.parametrize(
    ("status", "attempts", "expected"),
    [
        (Status.RUNNING, 1, Redelivery.RUN),
        (Status.RUNNING, 3, Redelivery.RUN),
        (Status.RUNNING, 4, Redelivery.DEAD_LETTER),
        (Status.COMPLETED, 1, Redelivery.DISCARD),
        (Status.FAILED, 9, Redelivery.DISCARD),
    ],
)
def test_what_a_delivery_does(status: Status, attempts: int, expected: Redelivery) -> None:
    task = make_task(status=status, attempts=attempts)
    assert on_delivery(task, max_attempts=3) is expected


def test_the_given_up_message_names_the_limit_and_the_last_reason() -> None:
    assert given_up_message(3, "the worker process died") == (
        "The task was given up after 3 attempts; the last one failed because the worker "
        "process died."
    )
    assert given_up_message(2, None).endswith("because its worker was lost.")


async def test_the_in_memory_store_follows_the_rules() -> None:
    """Start, shutdown refund, start again, crash, start again: attempts 1, 0, 1, 1, 2."""
    store = InMemoryTaskStore()
    task = await store.create(make_task())
    seen = []
    for step in ("start", "refund", "start", "crash", "start"):
        if step == "start":
            started = await store.start(task.id, "w")
        else:
            started = await store.release(task.id, None, penalize=step == "crash")
        assert started is not None
        seen.append(started.attempts)
    assert seen == [1, 0, 1, 1, 2]
