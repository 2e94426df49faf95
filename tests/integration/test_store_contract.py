"""The TaskStore contract, checked on every implementation: SQLite, Redis and in-memory.

Each test states one rule of the port (ports.TaskStore) that the service and workers rely on,
whichever store is behind them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from qtask.adapters.redis_store import RedisTaskStore
from qtask.domain.ports import Completion, TaskStore
from qtask.domain.task import CircuitInfo, Encoding, Status, Task, TaskOutcome, new_task_id
from qtask.errors import PendingCapError, TaskNotFoundError
from qtask.testing import InMemoryTaskStore
from qtask_testkit import make_task
from servers import RedisServer


@pytest.fixture(params=["redis", "memory"])
async def tracking_store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[TaskStore]:
    """A store that keeps the unpublished ledger (SQLite needs none: storing is publishing)."""
    opened: TaskStore
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = RedisTaskStore(server.url)
    else:
        memory = InMemoryTaskStore()
        memory.tracks_publishing = True
        opened = memory
    yield opened
    await opened.close()


async def stored(store: TaskStore, task_id: str) -> Task:
    task = await store.get(task_id)
    assert task is not None
    return task


# --- create and get --------------------------------------------------------------------------


async def test_create_then_get_returns_the_task(store: TaskStore) -> None:
    task = make_task(
        seed=7,
        program=b"\x00qpy\xff",
        idempotency_key="k",
        created_at=12.5,
        circuit_object="circuits/x.qasm",
        result_object="results/x.json",
    )
    assert await store.create(task) == task
    assert await store.get(task.id) == task
    assert await store.get("no-such-task") is None


async def test_create_get_roundtrip_of_every_field(store: TaskStore) -> None:
    info = CircuitInfo(
        encoding=Encoding.QPY,
        num_qubits=5,
        num_clbits=3,
        num_operations=17,
        clifford=False,
        needs_transpile=True,
        measured=False,
    )
    task = Task(
        id=new_task_id(),
        source="OPENQASM 3.0;\n// ünïcödé ✓\nqubit q;\n",
        info=info,
        shots=4096,
        seed=2**63 - 1,
        program=bytes(range(256)) + b"\x00\xff",
        status=Status.QUEUED,
        attempts=0,
        result=None,
        error=None,
        last_error="an earlier problem",
        created_at=1_700_000_000.123456,
        started_at=None,
        finished_at=None,
        idempotency_key="key-1",
        owner="alice@lab",
    )
    assert await store.create(task) == task
    assert await store.get(task.id) == task


async def test_roundtrip_of_finished_records_and_empty_values(store: TaskStore) -> None:
    completed = make_task(
        status=Status.COMPLETED,
        attempts=2,
        result={"00": 51, "11": 49},
        started_at=1.5,
        finished_at=2.25,
        seed=0,
        program=b"",
        source="",
    )
    failed = make_task(status=Status.FAILED, error="The simulator failed: x", attempts=3)
    no_seed = make_task(seed=None, program=None, result={})
    for task in (completed, failed, no_seed):
        await store.create(task)
        assert await store.get(task.id) == task


async def test_task_backend_is_stored_and_survives_start_and_complete(store: TaskStore) -> None:
    task = await store.create(make_task(backend="fake_fez"))
    assert (await stored(store, task.id)).backend == "fake_fez"
    started = await store.start(task.id, "w1")
    assert started is not None
    assert started.backend == "fake_fez"
    done = await store.complete(task.id, {"00": 100}, worker_id="w1", attempt=1)
    assert done.task.backend == "fake_fez"
    assert (await stored(store, task.id)).backend == "fake_fez"


async def test_create_many_stores_every_task(store: TaskStore) -> None:
    tasks = [make_task(shots=n) for n in range(1, 4)]
    assert await store.create_many(tasks) == tasks
    assert [await store.get(task.id) for task in tasks] == tasks


async def test_outcomes_of_the_tasks_that_exist(store: TaskStore) -> None:
    tasks = await store.create_many([make_task(shots=n) for n in range(1, 6)])
    await store.complete(tasks[1].id, {"0": 2, "1": 9})
    await store.start(tasks[2].id, "w")
    await store.fail(tasks[2].id, "it broke")
    await store.start(tasks[3].id, "w")
    wanted = [tasks[4].id, "no-such-task", tasks[1].id, tasks[4].id, tasks[2].id, tasks[3].id]
    assert await store.outcomes(wanted) == {
        tasks[4].id: TaskOutcome(tasks[4].id, Status.QUEUED),
        tasks[1].id: TaskOutcome(tasks[1].id, Status.COMPLETED, {"0": 2, "1": 9}),
        tasks[2].id: TaskOutcome(tasks[2].id, Status.FAILED, error="it broke"),
        tasks[3].id: TaskOutcome(tasks[3].id, Status.RUNNING),
    }
    assert await store.outcomes([]) == {}
    assert await store.outcomes(["nothing", "here"]) == {}


async def test_an_idempotency_key_stores_one_task(store: TaskStore) -> None:
    first = make_task(idempotency_key="same")
    duplicate = make_task(idempotency_key="same", shots=5)
    assert await store.create(first) == first
    assert await store.create(duplicate) == first
    assert await store.get(duplicate.id) is None
    again, fresh = make_task(idempotency_key="same"), make_task(idempotency_key="new")
    twin = make_task(idempotency_key="new")
    assert await store.create_many([again, fresh, twin]) == [first, fresh, fresh]
    assert await store.get(twin.id) is None


# --- start -----------------------------------------------------------------------------------


async def test_start_marks_the_task_running_and_counts_the_attempt(store: TaskStore) -> None:
    task = await store.create(make_task())
    started = await store.start(task.id, "worker-1")
    assert started is not None
    assert started.status is Status.RUNNING
    assert started.attempts == 1
    assert started.started_at is not None
    assert await store.get(task.id) == started
    redelivered = await store.start(task.id, "worker-2")  # the first worker was lost
    assert redelivered is not None
    assert redelivered.attempts == 2


async def test_start_returns_an_ended_task_unchanged(store: TaskStore) -> None:
    task = await store.create(make_task())
    done = (await store.complete(task.id, {"00": 100})).task
    assert await store.start(task.id, "w") == done
    assert await store.get(task.id) == done


async def test_start_of_an_unknown_task_is_none(store: TaskStore) -> None:
    assert await store.start("no-such-task", "w") is None


# --- complete and fail -----------------------------------------------------------------------


async def test_the_first_result_wins(store: TaskStore) -> None:
    task = await store.create(make_task())
    await store.start(task.id, "w")
    first = await store.complete(task.id, {"00": 55, "11": 45}, worker_id="w", attempt=1)
    assert first.transitioned
    done = first.task
    assert done.status is Status.COMPLETED
    assert done.result == {"00": 55, "11": 45}
    assert done.error is None
    assert done.finished_at is not None
    assert (done.completed_by, done.completed_attempt) == ("w", 1)
    late = await store.complete(task.id, {"01": 100}, worker_id="w2", attempt=2)
    assert late == Completion(done, transitioned=False)
    assert await store.fail(task.id, "too late") == done
    assert await store.get(task.id) == done


async def test_per_shot_results_are_kept_with_the_first_result(store: TaskStore) -> None:
    asked = await store.create(make_task(shots=3, memory=True))
    plain = await store.create(make_task(shots=3))
    assert (await store.get(asked.id), await store.get(plain.id)) == (asked, plain)
    outcomes = await store.outcomes([asked.id, plain.id])
    assert (outcomes[asked.id].memory, outcomes[plain.id].memory) == (True, False)
    await store.complete(asked.id, {"00": 2, "1 1": 1}, memory=["00", "1 1", "00"])
    await store.complete(asked.id, {"01": 3}, memory=["01", "01", "01"])  # late: ignored
    await store.complete(plain.id, {"00": 3})
    assert await store.memories([asked.id, plain.id, "no-such-task"]) == {
        asked.id: ["00", "1 1", "00"]
    }
    assert (await stored(store, asked.id)).memory is True
    assert (await store.outcomes([asked.id]))[asked.id].result == {"00": 2, "1 1": 1}


async def test_a_queued_task_may_complete_or_fail(store: TaskStore) -> None:
    completed = await store.create(make_task())
    assert (await store.complete(completed.id, {"0": 1})).task.status is Status.COMPLETED
    failed = await store.create(make_task())
    assert (await store.fail(failed.id, "invalid")).status is Status.FAILED


async def test_the_first_failure_wins(store: TaskStore) -> None:
    task = await store.create(make_task())
    failed = await store.fail(task.id, "The circuit failed.")
    assert failed.status is Status.FAILED
    assert failed.error == "The circuit failed."
    assert failed.result is None
    assert await store.complete(task.id, {"0": 1}) == Completion(failed, transitioned=False)
    assert await store.get(task.id) == failed


async def test_of_concurrent_completes_exactly_one_makes_the_transition(store: TaskStore) -> None:
    task = await store.create(make_task())
    await store.start(task.id, "w0")
    runs = [(f"w{n}", n) for n in range(12)]  # a run and its duplicates, finishing together
    answers = await asyncio.gather(
        *(store.complete(task.id, {"0": n}, worker_id=w, attempt=n) for w, n in runs)
    )
    [winner] = [n for n, answer in enumerate(answers) if answer.transitioned]
    done = await stored(store, task.id)
    assert (done.completed_by, done.completed_attempt, done.result) == (
        f"w{winner}",
        winner,
        {"0": winner},
    )
    assert all(answer.task == done for answer in answers)
    assert await store.pending_count("nobody") == 0


async def test_only_completing_records_who_ended_the_task(store: TaskStore) -> None:
    failed = await store.create(make_task())
    await store.fail(failed.id, "broke")
    ended = await store.complete(failed.id, {"0": 1}, worker_id="w", attempt=1)
    assert not ended.transitioned
    assert (ended.task.completed_by, ended.task.completed_attempt) == (None, None)
    assert (await store.get(failed.id)) == ended.task


async def test_ending_an_unknown_task_raises(store: TaskStore) -> None:
    with pytest.raises(TaskNotFoundError):
        await store.complete("no-such-task", {})
    with pytest.raises(TaskNotFoundError):
        await store.fail("no-such-task", "x")


async def test_fail_with_dead_letter_files_a_record(store: TaskStore) -> None:
    quiet = await store.create(make_task())
    await store.fail(quiet.id, "not a dead letter")
    assert await store.dead_letters(10) == []
    task = await store.create(make_task(attempts=3))
    await store.start(task.id, "w")  # the fourth attempt
    before = time.time()
    await store.fail(task.id, "given up after 4 attempts", dead_letter=True)
    later = await store.create(make_task())
    await store.fail(later.id, "also given up", dead_letter=True)
    records = await store.dead_letters(10)
    assert [record["task_id"] for record in records] == [later.id, task.id]  # newest first
    oldest = records[1]
    assert set(oldest) == {"task_id", "reason", "attempts", "at"}
    assert oldest["reason"] == "given up after 4 attempts"
    assert oldest["attempts"] == 4
    assert isinstance(oldest["at"], float)
    assert oldest["at"] >= before - 1
    assert await store.dead_letters(1) == records[:1]


# --- release ---------------------------------------------------------------------------------


async def test_a_penalized_release_keeps_the_attempt(store: TaskStore) -> None:
    task = await store.create(make_task(attempts=1))
    await store.start(task.id, "w")  # the second attempt
    released = await store.release(task.id, "the worker died", penalize=True)
    assert released is not None
    assert released.status is Status.QUEUED
    assert released.attempts == 2
    assert released.last_error == "the worker died"
    assert await store.get(task.id) == released


async def test_an_unpenalized_release_refunds_the_attempt(store: TaskStore) -> None:
    task = await store.create(make_task(last_error="earlier", attempts=1))
    await store.start(task.id, "w")  # the second attempt
    released = await store.release(task.id, None, penalize=False)
    assert released is not None
    assert released.status is Status.QUEUED
    assert released.attempts == 1
    assert released.last_error == "earlier"


async def test_the_start_after_a_refund_counts_the_same_attempt_again(store: TaskStore) -> None:
    """A shutdown's refund holds whatever the queue's own delivery count says (NATS)."""
    task = await store.create(make_task())
    await store.start(task.id, "w1")
    await store.release(task.id, None, penalize=False)
    again = await store.start(task.id, "w2")
    assert again is not None
    assert again.attempts == 1
    await store.release(task.id, "the worker died", penalize=True)
    third = await store.start(task.id, "w3")
    assert third is not None
    assert third.attempts == 2


async def test_only_a_running_task_is_released(store: TaskStore) -> None:
    task = await store.create(make_task())
    assert await store.release(task.id, "x", penalize=True) is None
    await store.complete(task.id, {})
    assert await store.release(task.id, "x", penalize=True) is None
    assert (await stored(store, task.id)).status is Status.COMPLETED
    assert await store.release("no-such-task", None, penalize=False) is None


# --- ping ------------------------------------------------------------------------------------


async def test_a_healthy_store_answers_ping(store: TaskStore) -> None:
    await store.ping()


# --- the unpublished ledger ------------------------------------------------------------------


async def test_unpublished_lists_queued_tasks_until_published(tracking_store: TaskStore) -> None:
    store = tracking_store
    old = [await store.create(make_task(created_at=10.0 + n)) for n in range(3)]
    recent = await store.create(make_task(created_at=500.0))
    assert await store.unpublished(100.0, 10) == old
    assert await store.unpublished(100.0, 2) == old[:2]
    assert await store.unpublished(1000.0, 10) == [*old, recent]
    await store.mark_published([old[0].id])
    assert await store.unpublished(100.0, 10) == old[1:]
    await store.complete(old[1].id, {})
    await store.start(old[2].id, "w")
    assert await store.unpublished(100.0, 10) == []


# --- the active listing and markers (re-publishing after the queue lost its stream) -----------


async def test_active_lists_queued_and_running_tasks_in_id_order(store: TaskStore) -> None:
    tasks = await store.create_many([make_task() for _ in range(8)])
    ids = sorted(task.id for task in tasks)
    await store.start(ids[0], "w")  # running: listed
    await store.complete(ids[1], {"0": 1})
    await store.fail(ids[2], "broke")
    await store.cancel(ids[3], "Task was cancelled.")
    await store.start(ids[4], "w")
    await store.release(ids[4], "worker stopped", penalize=False)  # queued again: listed
    listed = [ids[0], *ids[4:]]

    assert [task.id for task in await store.active(None, 100)] == listed
    assert (await store.active(None, 1))[0].status is Status.RUNNING
    assert [task.id for task in await store.active(ids[0], 2)] == listed[1:3]
    assert [task.id for task in await store.active(listed[2], 100)] == listed[3:]
    assert await store.active(listed[-1], 100) == []
    assert await store.active(None, 0) == []


async def test_active_pages_cover_every_active_task_once_while_tasks_end(
    store: TaskStore,
) -> None:
    tasks = await store.create_many([make_task() for _ in range(25)])
    seen: list[str] = []
    ended = 0
    cursor: str | None = None
    while page := await store.active(cursor, 4):
        seen += [task.id for task in page]
        cursor = page[-1].id
        await store.complete(page[0].id, {})  # ends behind the cursor: no effect on the rest
        ended += 1
    assert sorted(seen) == sorted(task.id for task in tasks)
    assert ended == 7
    assert len(await store.active(None, 100)) == 25 - ended


async def test_index_active_is_idempotent(store: TaskStore) -> None:
    tasks = await store.create_many([make_task() for _ in range(3)])
    await store.index_active()
    assert await store.index_active() == 0
    assert sorted(t.id for t in await store.active(None, 10)) == sorted(t.id for t in tasks)


async def test_index_listing_adds_nothing_the_stores_own_writes_listed(store: TaskStore) -> None:
    tasks = [make_task(owner="alice", created_at=1.0 + i) for i in range(3)]
    await store.create_many(tasks)
    assert await store.index_listing() == 0
    assert await store.index_listing() == 0
    page = await store.page("alice", None, None, 10)
    assert [item.outcome.id for item in page.tasks] == [t.id for t in reversed(tasks)]


async def test_swap_marker_is_a_compare_and_set(store: TaskStore) -> None:
    assert await store.marker("stream") is None
    assert not await store.swap_marker("stream", "something", "a")
    assert await store.swap_marker("stream", None, "a")
    assert not await store.swap_marker("stream", None, "b")  # no longer absent
    assert not await store.swap_marker("stream", "b", "c")
    assert await store.marker("stream") == "a"
    assert await store.swap_marker("stream", "a", '{"x": 1}')
    assert await store.marker("stream") == '{"x": 1}'
    assert await store.marker("other") is None


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_ends_a_queued_task_in_error(store: TaskStore) -> None:
    task = await store.create(make_task())
    cancelled = await store.cancel(task.id, "Task was cancelled.")
    assert cancelled is not None
    assert cancelled.status is Status.FAILED
    assert cancelled.error == "Task was cancelled."
    assert cancelled.finished_at is not None
    assert await store.get(task.id) == cancelled
    assert await store.outcomes([task.id]) == {
        task.id: TaskOutcome(task.id, Status.FAILED, error="Task was cancelled.")
    }
    assert await store.cancel(task.id, "again") == cancelled  # the first outcome stays


async def test_cancel_ends_a_running_task_and_refuses_its_late_result(store: TaskStore) -> None:
    running = await store.start((await store.create(make_task())).id, "w")
    assert running is not None
    cancelled = await store.cancel(running.id, "Task was cancelled.")
    assert cancelled is not None
    assert (cancelled.status, cancelled.error) == (Status.FAILED, "Task was cancelled.")
    assert await store.complete(running.id, {"0": 1}) == Completion(cancelled, False)
    assert await store.release(running.id, "lost", penalize=True) is None
    assert await store.active_counts() == {"queued": 0, "running": 0}


async def test_cancel_leaves_ended_tasks_alone(store: TaskStore) -> None:
    done = (await store.complete((await store.create(make_task())).id, {"0": 1})).task
    assert await store.cancel(done.id, "no") == done
    assert await store.cancel("no-such-task", "no") is None


async def test_a_cancelled_task_is_not_claimed(store: TaskStore) -> None:
    if not hasattr(store, "fetch"):
        pytest.skip("this store is not a queue (NATS delivers Redis's tasks)")
    keep = await store.create(make_task())
    drop = await store.create(make_task())
    await store.cancel(drop.id, "Task was cancelled.")
    claimed = await store.fetch(10, timeout=0.05)  # type: ignore[attr-defined]
    assert [delivery.task.id for delivery in claimed] == [keep.id]


async def test_a_cancelled_task_leaves_the_unpublished_ledger(tracking_store: TaskStore) -> None:
    store = tracking_store
    kept = await store.create(make_task(created_at=10.0))
    dropped = await store.create(make_task(created_at=11.0))
    await store.cancel(dropped.id, "Task was cancelled.")
    assert await store.unpublished(100.0, 10) == [kept]


# --- owners, pending counts and retention ----------------------------------------------------


async def test_outcomes_carry_the_owner(store: TaskStore) -> None:
    mine, anonymous = make_task(owner="alice"), make_task()
    await store.create_many([mine, anonymous])
    found = await store.outcomes([mine.id, anonymous.id])
    assert found[mine.id].owner == "alice"
    assert found[anonymous.id].owner is None
    assert found[mine.id].visible_to("alice")
    assert found[mine.id].visible_to(None)
    assert not found[mine.id].visible_to("bob")
    assert not found[anonymous.id].visible_to("alice")


async def test_pending_count_follows_each_owners_unfinished_tasks(store: TaskStore) -> None:
    alice = [make_task(owner="alice") for _ in range(5)]
    await store.create_many([*alice, make_task(owner="bob"), make_task()])
    assert await store.pending_count("alice") == 5
    assert await store.pending_count("bob") == 1
    assert await store.pending_count("nobody") == 0
    await store.start(alice[0].id, "w")  # running still counts
    await store.release(alice[0].id, "lost", penalize=True)  # and so does queued again
    await store.start(alice[1].id, "w")
    assert await store.pending_count("alice") == 5
    await store.complete(alice[1].id, {"0": 1})
    await store.fail(alice[2].id, "broke")
    await store.cancel(alice[3].id, "Task was cancelled.")
    await store.complete(alice[1].id, {"0": 1})  # a late duplicate changes nothing
    await store.cancel(alice[3].id, "Task was cancelled.")
    assert await store.pending_count("alice") == 2
    assert await store.pending_count("bob") == 1


async def test_create_at_the_cap_stores_nothing_and_says_how_many_are_pending(
    store: TaskStore,
) -> None:
    await store.create_many([make_task(owner="alice") for _ in range(3)], max_pending=4)
    with pytest.raises(PendingCapError) as refused:
        await store.create_many([make_task(owner="alice") for _ in range(2)], max_pending=4)
    assert (refused.value.owner, refused.value.pending, refused.value.cap) == ("alice", 3, 4)
    assert await store.pending_count("alice") == 3
    assert await store.active_counts() == {"queued": 3, "running": 0}
    # Other owners, and tasks with no owner, are not counted against alice's cap.
    others = [make_task(owner="bob"), make_task(), make_task(owner="alice")]
    assert await store.create_many(others, max_pending=4) == others
    assert await store.pending_count("alice") == 4
    # A task that ended frees a place; no cap (0) is no check.
    await store.cancel(others[2].id, "Task was cancelled.")
    await store.create(make_task(owner="alice"))
    assert await store.pending_count("alice") == 4
    await store.create_many([make_task(owner="alice")], max_pending=0)
    assert await store.pending_count("alice") == 5


async def test_tasks_found_by_their_key_are_not_counted_against_the_cap(
    store: TaskStore,
) -> None:
    kept = [make_task(owner="alice", idempotency_key=f"alice:b/{i}") for i in range(2)]
    await store.create_many(kept, max_pending=2)
    retry = [make_task(owner="alice", idempotency_key=f"alice:b/{i}") for i in range(2)]
    assert await store.create_many(retry, max_pending=2) == kept
    # Twins within one call are one new task, and a new one past the cap refuses the call.
    twins = [make_task(owner="bob", idempotency_key="bob:t") for _ in range(2)]
    assert await store.create_many(twins, max_pending=1) == [twins[0], twins[0]]
    with pytest.raises(PendingCapError):
        await store.create_many([*retry, make_task(owner="alice")], max_pending=2)
    assert await store.pending_count("alice") == 2


async def test_concurrent_creates_at_a_cap_store_exactly_the_cap(store: TaskStore) -> None:
    answers = await asyncio.gather(
        *(store.create_many([make_task(owner="alice")], max_pending=5) for _ in range(30)),
        return_exceptions=True,
    )
    stored_ = [answer for answer in answers if isinstance(answer, list)]
    assert len(stored_) == 5
    assert sum(isinstance(answer, PendingCapError) for answer in answers) == 25
    assert await store.pending_count("alice") == 5
    assert await store.active_counts() == {"queued": 5, "running": 0}


async def test_find_keyed_returns_the_tasks_stored_under_keys(store: TaskStore) -> None:
    first, second = make_task(idempotency_key="a:1"), make_task(idempotency_key="a:2")
    await store.create_many([first, second, make_task()])
    assert await store.find_keyed(["a:2", "nothing", "a:1", "a:2"]) == {
        "a:1": first,
        "a:2": second,
    }
    assert await store.find_keyed([]) == {}
    await store.complete(first.id, {"0": 1})
    await store.remove([first])  # a removed task's key names nothing any more
    assert await store.find_keyed(["a:1"]) == {}


async def test_expired_lists_ended_tasks_oldest_first(store: TaskStore) -> None:
    tasks = await store.create_many([make_task() for _ in range(5)])
    ids = [task.id for task in tasks]
    await store.complete(ids[2], {"0": 1})
    await store.fail(ids[0], "broke")
    await store.cancel(ids[1], "Task was cancelled.")
    await store.start(ids[3], "w")  # running and queued tasks never expire
    cutoff = time.time() + 1
    found = await store.expired(cutoff, 10)
    assert [task.id for task in found] == [ids[2], ids[0], ids[1]]
    assert [task.id for task in await store.expired(cutoff, 2)] == [ids[2], ids[0]]
    assert await store.expired(found[0].finished_at or 0.0, 10) == []  # strictly before


async def test_remove_deletes_ended_tasks_and_their_idempotency_keys(store: TaskStore) -> None:
    done = make_task(idempotency_key="once")
    running, queued = make_task(), make_task()
    await store.create_many([done, running, queued])
    await store.complete(done.id, {"1": 3})
    await store.start(running.id, "w")
    assert await store.remove([done, running, queued]) == 1
    assert await store.get(done.id) is None
    assert await store.outcomes([done.id]) == {}
    assert await store.get(running.id) is not None
    assert await store.get(queued.id) is not None
    assert await store.expired(time.time() + 1, 10) == []
    assert await store.remove([done]) == 0  # already gone
    again = make_task(idempotency_key="once")
    assert await store.create(again) == again  # the key is free for a new task
    counts = await store.active_counts()
    assert counts == {"queued": 2, "running": 1} or counts == {"queued": 1, "running": 2}


# --- listing (page) --------------------------------------------------------------------------


async def test_page_lists_newest_first_with_ties_broken_by_id(store: TaskStore) -> None:
    tied = sorted(new_task_id() for _ in range(3))
    tasks = [make_task(created_at=100.0 + i) for i in range(4)]
    tasks += [make_task(id=task_id, created_at=102.5) for task_id in tied]
    await store.create_many(tasks)
    expected = [(t.created_at, t.id) for t in tasks]
    expected.sort(reverse=True)
    seen: list[tuple[float, str]] = []
    after = None
    while True:
        page = await store.page(None, None, after, 2)
        seen += [(item.created_at, item.outcome.id) for item in page.tasks]
        if page.next is None:
            break
        after = page.next
    assert seen == expected


async def test_page_keeps_its_place_while_tasks_are_added(store: TaskStore) -> None:
    old = [make_task(created_at=100.0 + i) for i in range(4)]
    await store.create_many(old)
    first = await store.page(None, None, None, 2)
    assert first.next is not None
    await store.create(make_task(created_at=200.0))
    rest = await store.page(None, None, first.next, 10)
    assert [item.outcome.id for item in rest.tasks] == [old[1].id, old[0].id]
    assert rest.next is None


async def test_page_filters_by_owner_and_status(store: TaskStore) -> None:
    mine = make_task(owner="alice", created_at=1.0)
    done = make_task(owner="alice", created_at=2.0)
    other = make_task(owner="bob", created_at=3.0)
    await store.create_many([mine, done, other])
    await store.complete(done.id, {"0": 1})
    alice = await store.page("alice", None, None, 10)
    assert [item.outcome.id for item in alice.tasks] == [done.id, mine.id]
    pending = await store.page("alice", frozenset({Status.QUEUED, Status.RUNNING}), None, 10)
    assert [item.outcome.id for item in pending.tasks] == [mine.id]
    everyone = await store.page(None, frozenset({Status.COMPLETED}), None, 10)
    assert [(item.outcome.id, item.outcome.result) for item in everyone.tasks] == [
        (done.id, {"0": 1})
    ]


async def test_page_leaves_out_removed_tasks(store: TaskStore) -> None:
    kept, gone = make_task(owner="alice"), make_task(owner="alice")
    await store.create_many([kept, gone])
    await store.fail(gone.id, "boom")
    assert await store.remove([await stored(store, gone.id)]) == 1
    for owner in ("alice", None):
        page = await store.page(owner, None, None, 10)
        assert [item.outcome.id for item in page.tasks] == [kept.id]
