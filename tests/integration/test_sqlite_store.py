"""The SQLite task store and queue, on a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qtask.adapters import sqlite_store, sqlite_tables
from qtask.adapters.sqlite_store import SQLiteTaskStore
from qtask.adapters.sqlite_tables import COLUMNS, SCHEMA, to_row
from qtask.config import WorkerSettings
from qtask.domain.ports import Delivery
from qtask.domain.task import Status, Task
from qtask.errors import PendingCapError, StoreUnavailableError, TaskNotFoundError
from qtask.execution.items import RunOutcome
from qtask.testing import InMemoryObjectStore
from qtask.worker.runner import Worker
from qtask_testkit import BELL_INFO, make_task

INFO = BELL_INFO


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "qtask.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteTaskStore]:
    opened = SQLiteTaskStore(db_path)
    yield opened
    await opened.close()


async def stored(store: SQLiteTaskStore, task_id: str) -> Task:
    task = await store.get(task_id)
    assert task is not None
    return task


# --- create and get --------------------------------------------------------------------------


async def test_create_many(store: SQLiteTaskStore) -> None:
    tasks = [make_task(shots=n) for n in range(1, 6)]
    returned = await store.create_many(tasks)
    assert returned == tasks
    for task in tasks:
        assert await store.get(task.id) == task
    assert await store.counts() == {"queued": 5}


async def test_create_many_empty(store: SQLiteTaskStore) -> None:
    assert await store.create_many([]) == []


async def test_idempotency_key_returns_the_first_task(store: SQLiteTaskStore) -> None:
    first = await store.create(make_task(idempotency_key="k"))
    second = await store.create(make_task(idempotency_key="k", shots=7))
    assert second == first
    assert await store.counts() == {"queued": 1}
    other = await store.create(make_task(idempotency_key="other"))
    assert other.id != first.id
    assert await store.counts() == {"queued": 2}


async def test_idempotency_key_within_one_create_many(store: SQLiteTaskStore) -> None:
    a = make_task(idempotency_key="same")
    b = make_task(idempotency_key="same")
    returned = await store.create_many([a, b])
    assert [t.id for t in returned] == [a.id, a.id]
    assert await store.get(b.id) is None


async def test_concurrent_creates_with_one_key_store_one_task(store: SQLiteTaskStore) -> None:
    tasks = [make_task(idempotency_key="race") for _ in range(20)]
    returned = await asyncio.gather(*(store.create(t) for t in tasks))
    assert len({t.id for t in returned}) == 1
    assert await store.counts() == {"queued": 1}


async def test_tasks_without_key_are_never_deduplicated(store: SQLiteTaskStore) -> None:
    await store.create(make_task())
    await store.create(make_task())
    assert await store.counts() == {"queued": 2}


async def test_failing_write_does_not_spoil_its_group(store: SQLiteTaskStore) -> None:
    task = make_task()
    await store.create(task)
    good = make_task()
    results = await asyncio.gather(
        store.create(replace(task, shots=1)),  # the same id again: the insert fails
        store.create(good),
        return_exceptions=True,
    )
    assert isinstance(results[0], Exception)
    assert results[1] == good
    assert await store.get(good.id) == good
    assert (await stored(store, task.id)).shots == 100


async def test_a_write_alone_in_its_commit_that_fails_leaves_nothing(
    store: SQLiteTaskStore,
) -> None:
    # A write alone in its group runs without a savepoint: its failure rolls the whole
    # transaction back, half-done statements included, and the next write commits as usual.
    task = make_task()

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute(sqlite_tables.INSERT, to_row(task))
        raise RuntimeError("failed after its insert")

    with pytest.raises(RuntimeError, match="failed after its insert"):
        await store.db.write(half_done)
    assert await store.get(task.id) is None
    good = make_task()
    assert await store.create(good) == good
    assert await store.get(good.id) == good


async def test_concurrent_creates_are_all_stored(store: SQLiteTaskStore) -> None:
    tasks = [make_task(shots=i + 1) for i in range(200)]
    returned = await asyncio.gather(*(store.create(t) for t in tasks))
    assert returned == tasks
    assert await store.counts() == {"queued": 200}
    for task in tasks[::37]:
        assert await store.get(task.id) == task


# --- the queue ----------------------------------------------------------------------------


async def test_fetch_claims_in_submission_order(store: SQLiteTaskStore) -> None:
    tasks = [make_task() for _ in range(5)]
    for task in tasks:
        await store.create(task)
    before = time.time()
    first = await store.fetch(3, timeout=0)
    assert [d.task.id for d in first] == [t.id for t in tasks[:3]]
    for delivery in first:
        assert delivery.task.status is Status.RUNNING
        assert delivery.task.attempts == 1
        assert delivery.task.started_at is not None
        assert delivery.task.started_at >= before - 1
        assert await store.get(delivery.task.id) == delivery.task
    rest = await store.fetch(10, timeout=0)
    assert [d.task.id for d in rest] == [t.id for t in tasks[3:]]
    assert await store.counts() == {"running": 5}


async def test_leased_tasks_are_not_fetched_again(store: SQLiteTaskStore) -> None:
    await store.create(make_task())
    assert len(await store.fetch(10, timeout=0)) == 1
    assert await store.fetch(10, timeout=0) == []


async def test_finished_tasks_are_not_fetched(store: SQLiteTaskStore) -> None:
    await store.create(make_task(status=Status.COMPLETED, result={"0": 1}))
    await store.create(make_task(status=Status.FAILED, error="x"))
    assert await store.fetch(10, timeout=0) == []


async def test_fetch_times_out_empty(store: SQLiteTaskStore) -> None:
    began = time.monotonic()
    assert await store.fetch(1, timeout=0.2) == []
    elapsed = time.monotonic() - began
    assert 0.15 <= elapsed < 2.0


async def test_fetch_wakes_up_on_create(store: SQLiteTaskStore) -> None:
    task = make_task()

    async def create_later() -> None:
        await asyncio.sleep(0.05)
        await store.create(task)

    began = time.monotonic()
    deliveries, _ = await asyncio.gather(store.fetch(1, timeout=10.0), create_later())
    elapsed = time.monotonic() - began
    assert [d.task.id for d in deliveries] == [task.id]
    assert elapsed < 2.0


async def waiting_fetch(store: SQLiteTaskStore, max_tasks: int) -> asyncio.Task[list[Delivery]]:
    """A fetch that has found the queue empty and now waits for a wake-up."""
    fetch = asyncio.ensure_future(store.fetch(max_tasks, timeout=10.0))
    deadline = time.monotonic() + 5.0
    while not store._handoff_limit:  # set once its claim found nothing
        assert time.monotonic() < deadline, "the fetch never started waiting"
        await asyncio.sleep(0.001)
    return fetch


async def test_create_claims_for_a_waiting_fetch_in_its_own_commit(
    store: SQLiteTaskStore,
) -> None:
    fetch = await waiting_fetch(store, 2)
    [task] = await store.create_many([make_task()])
    # Already claimed when the create returns: no second commit between submit and run.
    assert task.status is Status.QUEUED  # what the create answers is the task as submitted
    claimed = await stored(store, task.id)
    assert (claimed.status, claimed.attempts, claimed.started_at is not None) == (
        Status.RUNNING,
        1,
        True,
    )
    deliveries = await fetch
    assert [(d.task.id, d.task.status, d.task.attempts) for d in deliveries] == [
        (task.id, Status.RUNNING, 1)
    ]


async def test_create_claims_no_more_than_the_waiting_fetch_asked_for(
    store: SQLiteTaskStore,
) -> None:
    fetch = await waiting_fetch(store, 2)
    tasks = await store.create_many([make_task(shots=n) for n in range(1, 5)])
    deliveries = await fetch
    assert [d.task.id for d in deliveries] == [t.id for t in tasks[:2]]
    assert await store.counts() == {"running": 2, "queued": 2}


async def test_a_claim_handed_to_a_fetch_that_gave_up_goes_to_the_next_fetch(
    store: SQLiteTaskStore,
) -> None:
    fetch = await waiting_fetch(store, 1)
    writes = store._db.write

    async def cancel_fetch_then_write(fn: Any) -> Any:
        fetch.cancel()  # the waiting fetch goes away while the create commits
        return await writes(fn)

    store._db.write = cancel_fetch_then_write  # type: ignore[method-assign]
    [task] = await store.create_many([make_task()])
    store._db.write = writes  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await fetch
    deliveries = await store.fetch(1, timeout=0)
    assert [(d.task.id, d.task.attempts) for d in deliveries] == [(task.id, 1)]


async def test_a_claim_nobody_took_is_requeued_with_its_attempt_refunded_on_close(
    db_path: Path,
) -> None:
    store = SQLiteTaskStore(db_path)
    fetch = await waiting_fetch(store, 1)
    writes = store._db.write

    async def cancel_fetch_then_write(fn: Any) -> Any:
        fetch.cancel()
        return await writes(fn)

    store._db.write = cancel_fetch_then_write  # type: ignore[method-assign]
    [task] = await store.create_many([make_task()])
    with pytest.raises(asyncio.CancelledError):
        await fetch
    await store.close()
    reopened = SQLiteTaskStore(db_path)
    try:
        again = await stored(reopened, task.id)
        assert (again.status, again.attempts) == (Status.QUEUED, 0)
    finally:
        await reopened.close()


class _OnePool:
    """What Worker reads of its process pool; the test records a run, it starts none."""

    size = 1


class _GatedCommit(sqlite3.Connection):
    """A connection whose COMMIT waits for `gate` (and then fails when `fail` is set)."""

    gate = threading.Event()
    fail = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql == "COMMIT":
            assert self.gate.wait(10.0), "the test never opened the gate"
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


@pytest.fixture
def gated_store(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLiteTaskStore]:
    """A store whose commits wait for _GatedCommit.gate (open until a test closes it)."""
    connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **kw: connect(*a, factory=_GatedCommit, **kw)
    )
    _GatedCommit.gate.set()
    _GatedCommit.fail = False
    yield SQLiteTaskStore(db_path)
    _GatedCommit.gate.set()
    _GatedCommit.fail = False


async def test_a_waiting_fetch_gets_the_task_while_its_commit_is_still_under_way(
    gated_store: SQLiteTaskStore,
) -> None:
    store = gated_store
    fetch = await waiting_fetch(store, 1)
    _GatedCommit.gate.clear()  # the insert's commit (its fsync) does not end until opened
    create = asyncio.create_task(store.create_many([make_task()]))
    deliveries = await asyncio.wait_for(fetch, 5.0)  # the run may start now
    assert not create.done()  # ... but the submitter has no answer before the commit
    _GatedCommit.gate.set()
    [task] = await create
    assert [d.task.id for d in deliveries] == [task.id]
    done = await store.complete(task.id, {"00": 1})  # its result is a later commit
    assert done.transitioned
    await store.close()


async def test_a_task_handed_over_whose_commit_fails_was_never_stored(
    gated_store: SQLiteTaskStore,
) -> None:
    store = gated_store
    fetch = await waiting_fetch(store, 1)
    _GatedCommit.gate.clear()
    _GatedCommit.fail = True
    create = asyncio.create_task(store.create_many([make_task()]))
    [delivery] = await asyncio.wait_for(fetch, 5.0)
    _GatedCommit.gate.set()
    with pytest.raises(StoreUnavailableError, match="disk I/O error"):
        await create
    _GatedCommit.fail = False
    assert await store.get(delivery.task.id) is None
    with pytest.raises(TaskNotFoundError):  # the run's result finds no task: it is discarded
        await store.complete(delivery.task.id, {"00": 1})
    assert await store.counts() == {}
    await store.close()


async def test_a_remote_task_waits_for_its_commit_before_the_fetch_gets_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **kw: connect(*a, factory=_GatedCommit, **kw)
    )
    _GatedCommit.gate.set()
    _GatedCommit.fail = False
    store = SQLiteTaskStore(db_path, early_handover=lambda task: task.backend != "remote")
    fetch = await waiting_fetch(store, 1)
    _GatedCommit.gate.clear()
    create = asyncio.create_task(store.create_many([make_task(backend="remote")]))
    await asyncio.sleep(0.2)
    assert not fetch.done()  # its provider job must not be submitted before the record exists
    _GatedCommit.gate.set()
    [task] = await create
    assert [d.task.id for d in await asyncio.wait_for(fetch, 5.0)] == [task.id]
    await store.close()


async def test_a_run_recorded_before_its_insert_commits_keeps_its_result_object(
    gated_store: SQLiteTaskStore,
) -> None:
    # The worker asks the store whether the task already ended before writing per-shot results;
    # a task handed over before its commit is not visible yet, and is not "ended".
    store = gated_store
    objects = InMemoryObjectStore()
    worker = Worker(store, store, _OnePool(), WorkerSettings(processes=1), objects=objects)
    fetch = await waiting_fetch(store, 1)
    _GatedCommit.gate.clear()
    task = make_task(memory=True, result_object="completed/x.json", circuit_object=None)
    create = asyncio.create_task(store.create_many([task]))
    [delivery] = await asyncio.wait_for(fetch, 5.0)
    outcome = RunOutcome(delivery.task.id, counts={"00": 2}, memory=["00", "00"])
    record = asyncio.create_task(worker._record(delivery, outcome, 0.001, 1))
    await asyncio.sleep(0.05)  # the run is done and recorded while the fsync still lasts
    _GatedCommit.gate.set()
    await create
    await record
    assert (await stored(store, task.id)).status is Status.COMPLETED
    assert "completed/x.json" in objects.objects  # with the per-shot results in it
    await store.close()


async def test_a_failed_create_claims_nothing(store: SQLiteTaskStore) -> None:
    fetch = await waiting_fetch(store, 1)
    with pytest.raises(PendingCapError):
        await store.create_many([make_task(owner="k"), make_task(owner="k")], max_pending=1)
    assert await store.counts() == {}
    assert not fetch.done()
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch


async def test_fetch_wakes_up_on_release(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    await store.fetch(1, timeout=0)

    async def release_later() -> None:
        await asyncio.sleep(0.05)
        await store.release(task.id, "crash", penalize=True)

    began = time.monotonic()
    deliveries, _ = await asyncio.gather(store.fetch(1, timeout=10.0), release_later())
    assert [d.task.id for d in deliveries] == [task.id]
    assert deliveries[0].task.attempts == 2
    assert time.monotonic() - began < 2.0


async def test_lapsed_lease_is_claimed_again(
    store: SQLiteTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await store.create(make_task())
    monkeypatch.setattr(sqlite_store, "LEASE_SECONDS", -1.0)  # every lease lapses at once
    [first] = await store.fetch(1, timeout=0)
    [second] = await store.fetch(1, timeout=0)
    assert first.task.id == second.task.id == task.id
    assert second.task.attempts == 2


async def test_renewed_lease_is_not_claimed(
    store: SQLiteTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await store.create(make_task())
    monkeypatch.setattr(sqlite_store, "LEASE_SECONDS", -1.0)
    [delivery] = await store.fetch(1, timeout=0)
    monkeypatch.setattr(sqlite_store, "LEASE_SECONDS", 30.0)
    await delivery.in_progress()  # renews the lease
    assert await store.fetch(1, timeout=0) == []
    assert (await stored(store, task.id)).status is Status.RUNNING


async def test_delivery_ack_and_nak_are_harmless(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    [delivery] = await store.fetch(1, timeout=0)
    assert delivery.task.id == task.id
    await store.complete(task.id, {"00": 1})
    await delivery.ack()
    await delivery.nak()
    assert (await stored(store, task.id)).status is Status.COMPLETED


# --- outcomes --------------------------------------------------------------------------------


async def test_complete_is_first_wins(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    await store.fetch(1, timeout=0)
    done = (await store.complete(task.id, {"00": 60, "11": 40})).task
    assert done.status is Status.COMPLETED
    assert done.result == {"00": 60, "11": 40}
    assert done.finished_at is not None
    again = await store.complete(task.id, {"01": 100})
    assert (again.task, again.transitioned) == (done, False)
    after_fail = await store.fail(task.id, "late failure")
    assert after_fail == done
    assert await store.get(task.id) == done


async def test_fail_is_final(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    await store.fetch(1, timeout=0)
    failed = await store.fail(task.id, "The task ran longer than the limit.")
    assert failed.status is Status.FAILED
    assert failed.error == "The task ran longer than the limit."
    assert failed.result is None
    assert (await store.complete(task.id, {"00": 1})).task == failed
    assert await store.release(task.id, "crash", penalize=True) is None
    assert await store.get(task.id) == failed


async def test_complete_of_a_queued_task(store: SQLiteTaskStore) -> None:
    # A result from a worker whose lease lapsed and whose task was requeued is still stored.
    task = await store.create(make_task())
    done = await store.complete(task.id, {"00": 1})
    assert done.transitioned
    assert done.task.status is Status.COMPLETED


async def test_outcome_of_unknown_task(store: SQLiteTaskStore) -> None:
    with pytest.raises(TaskNotFoundError):
        await store.complete("missing", {"0": 1})
    with pytest.raises(TaskNotFoundError):
        await store.fail("missing", "x")


async def test_release_with_penalty_keeps_the_attempt(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    await store.fetch(1, timeout=0)
    released = await store.release(task.id, "the worker process died", penalize=True)
    assert released is not None
    assert released.status is Status.QUEUED
    assert released.attempts == 1
    assert released.last_error == "the worker process died"
    assert await store.get(task.id) == released


async def test_release_without_penalty_refunds_the_attempt(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    await store.fetch(1, timeout=0)
    await store.release(task.id, "first", penalize=True)
    [delivery] = await store.fetch(1, timeout=0)
    assert delivery.task.attempts == 2
    released = await store.release(task.id, None, penalize=False)
    assert released is not None
    assert released.status is Status.QUEUED
    assert released.attempts == 1
    assert released.last_error == "first"  # a None reason keeps the previous one


async def test_release_of_a_task_that_is_not_running(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    assert await store.release(task.id, "x", penalize=False) is None
    assert await store.release("missing", "x", penalize=False) is None
    assert (await stored(store, task.id)).attempts == 0


async def test_recover_requeues_running_tasks_and_keeps_attempts(
    store: SQLiteTaskStore,
) -> None:
    running = [await store.create(make_task()) for _ in range(2)]
    await store.fetch(2, timeout=0)
    queued = await store.create(make_task())
    done = await store.create(make_task())
    await store.complete(done.id, {"00": 1})

    assert await store.recover() == 2
    for task in running:
        recovered = await stored(store, task.id)
        assert recovered.status is Status.QUEUED
        assert recovered.attempts == 1
        assert recovered.last_error == "the service stopped while the task ran"
    assert (await stored(store, queued.id)).attempts == 0
    assert (await stored(store, done.id)).status is Status.COMPLETED
    deliveries = await store.fetch(10, timeout=0)
    assert [d.task.id for d in deliveries] == [running[0].id, running[1].id, queued.id]
    assert [d.task.attempts for d in deliveries] == [2, 2, 1]


async def test_recover_keeps_an_earlier_reason(store: SQLiteTaskStore) -> None:
    task = await store.create(make_task())
    await store.fetch(1, timeout=0)
    await store.release(task.id, "crashed", penalize=True)
    await store.fetch(1, timeout=0)
    await store.recover()
    assert (await stored(store, task.id)).last_error == "crashed"


async def test_recover_with_nothing_running(store: SQLiteTaskStore) -> None:
    await store.create(make_task())
    assert await store.recover() == 0


# --- durability and lifecycle ----------------------------------------------------------------


async def test_data_survives_reopening(db_path: Path) -> None:
    first = SQLiteTaskStore(db_path)
    done = await first.create(make_task(idempotency_key="durable"))
    running = await first.create(make_task())
    queued = await first.create(make_task())
    await first.fetch(2, timeout=0)
    completed = (await first.complete(done.id, {"00": 3}, worker_id="w", attempt=1)).task
    await first.close()

    second = SQLiteTaskStore(db_path)
    try:
        assert await second.get(done.id) == completed
        assert (await stored(second, running.id)).status is Status.RUNNING
        assert (await stored(second, queued.id)).status is Status.QUEUED
        assert await second.create(make_task(idempotency_key="durable")) == completed
        assert await second.recover() == 1
        deliveries = await second.fetch(5, timeout=0)
        assert [d.task.id for d in deliveries] == [running.id, queued.id]
        assert [d.task.attempts for d in deliveries] == [2, 1]
    finally:
        await second.close()


async def test_create_then_close_keeps_every_acknowledged_write(db_path: Path) -> None:
    first = SQLiteTaskStore(db_path)
    tasks = [make_task() for _ in range(50)]
    await asyncio.gather(*(first.create(t) for t in tasks))
    await first.close()
    second = SQLiteTaskStore(db_path)
    try:
        assert await second.counts() == {"queued": 50}
    finally:
        await second.close()


async def test_ping(store: SQLiteTaskStore) -> None:
    await store.ping()


async def test_write_after_close_is_refused(db_path: Path) -> None:
    closing = SQLiteTaskStore(db_path)
    await closing.close()
    await closing.close()  # closing twice is fine
    with pytest.raises(StoreUnavailableError):
        await closing.create(make_task())


async def test_counts(store: SQLiteTaskStore) -> None:
    assert await store.counts() == {}
    a = await store.create(make_task())
    await store.create(make_task())
    await store.create(make_task())
    await store.fetch(1, timeout=0)
    await store.complete(a.id, {"00": 1})
    await store.fetch(1, timeout=0)
    assert await store.counts() == {"completed": 1, "running": 1, "queued": 1}


async def test_a_database_from_before_owners_is_migrated(db_path: Path) -> None:
    # The schema as qtask 0.x wrote it, before tasks had owners, recorded who completed them
    # kept per-shot results or named a backend.
    new_columns = (
        ",\n    owner TEXT,\n    completed_by TEXT,\n    completed_attempt INTEGER,"
        "\n    memory INTEGER NOT NULL DEFAULT 0,\n    memory_data TEXT,\n"
        "    backend TEXT\n"
    )
    old_schema = SCHEMA.replace(new_columns, "\n")
    assert "    owner TEXT" not in old_schema
    assert "completed_by" not in old_schema
    assert "memory" not in old_schema
    old = make_task(idempotency_key="k")
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(old_schema)
    row = to_row(old)[:-5]
    conn.execute(
        f"INSERT INTO tasks ({COLUMNS.rsplit(',', 5)[0]}) VALUES ({', '.join('?' * len(row))})",
        row,
    )
    conn.commit()
    conn.close()
    store = SQLiteTaskStore(db_path)
    try:
        assert await store.get(old.id) == old
        mine = make_task(owner="alice")
        await store.create(mine)
        assert await store.pending_count("alice") == 1
        assert (await store.outcomes([mine.id]))[mine.id].owner == "alice"
        done = await store.complete(old.id, {"0": 1}, worker_id="w", attempt=1)
        assert (done.task.completed_by, done.task.completed_attempt) == ("w", 1)
        asked = await store.create(make_task(memory=True))
        await store.complete(asked.id, {"0": 1}, memory=["0"])
        assert await store.memories([asked.id]) == {asked.id: ["0"]}
    finally:
        await store.close()
    reopened = SQLiteTaskStore(db_path)  # migrating twice is harmless
    try:
        assert await reopened.get(mine.id) == mine
    finally:
        await reopened.close()


@pytest.mark.parametrize("owner", [None, "alice"])
@pytest.mark.parametrize("after", [None, (100.0, "some-id")])
@pytest.mark.parametrize("statuses", [None, frozenset({Status.QUEUED, Status.RUNNING})])
async def test_listing_pages_walk_an_index_without_sorting(
    store: SQLiteTaskStore,
    owner: str | None,
    after: tuple[float, str] | None,
    statuses: frozenset[Status] | None,
) -> None:
    await store.create_many([make_task(owner=owner, created_at=float(i)) for i in range(50)])
    query, params = sqlite_store.page_query(owner, statuses, after, 10)
    with sqlite3.connect(store._db.path) as conn:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))
    index = "tasks_owner_created" if owner else "tasks_created"
    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # no sort of the whole table per page


async def test_a_fetch_cancelled_as_a_publish_wakes_it_ends_cancelled(
    store: SQLiteTaskStore,
) -> None:
    # On Python 3.11 asyncio.wait_for dropped this cancel: the worker's stop then waited for the
    # fetch's whole timeout (tests/unit/test_cancel_races.py).
    fetching = asyncio.create_task(store.fetch(1, 30.0))
    deadline = time.monotonic() + 5
    while not store._handoff_limit:  # set while the fetch waits for a wake-up
        assert time.monotonic() < deadline, "the fetch never started waiting"
        await asyncio.sleep(0.001)

    await store.publish([])  # sets the wake-up without yielding to the loop ...
    fetching.cancel()  # ... so the cancel lands in the same step

    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await fetching
