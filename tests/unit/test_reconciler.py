"""The reconciler: a lost stream is detected as such and its active tasks are published again,
once, resuming after an interruption; a healthy stream's backlog is never published twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from qtask.application import reconciler as reconciler_module
from qtask.application.reconciler import STREAM_MARKER, Reconciler, StreamMark, stream_lost
from qtask.domain.ports import StreamState
from qtask.domain.task import Status, Task
from qtask.errors import QueueUnavailableError, StoreUnavailableError
from qtask.testing import InMemoryStream, InMemoryTaskStore
from qtask_testkit import make_task


def tracking_store() -> InMemoryTaskStore:
    store = InMemoryTaskStore()
    store.tracks_publishing = True
    return store


async def backlog(store: InMemoryTaskStore, stream: InMemoryStream, count: int) -> list[Task]:
    """`count` queued tasks, old, published into the stream as the API does."""
    old = time.time() - 3600
    tasks = await store.create_many([make_task(created_at=old) for _ in range(count)])
    await stream.publish(tasks)
    await store.mark_published([task.id for task in tasks])
    stream.published.clear()
    return tasks


# --- the detection rule --------------------------------------------------------------------------


def test_the_same_stream_further_on_is_not_lost() -> None:
    mark = StreamMark("s1", 10)
    assert not stream_lost(mark, StreamState("s1", 10))
    assert not stream_lost(mark, StreamState("s1", 5000))


def test_another_stream_is_lost() -> None:
    assert stream_lost(StreamMark("s1", 10), StreamState("s2", 10))
    assert stream_lost(StreamMark("s1", 10), StreamState("s2", 0))


def test_a_stream_whose_sequence_went_backwards_is_lost() -> None:
    assert stream_lost(StreamMark("s1", 10), StreamState("s1", 9))


def test_a_mark_survives_its_stored_form() -> None:
    mark = StreamMark("2026-11-30T15:00:00.123456+00:00", 42, "some-id", "owner", 12.5)
    assert StreamMark.load(mark.dump()) == mark
    assert StreamMark.load(StreamMark("s", 0).dump()) == StreamMark("s", 0)


# --- passes ------------------------------------------------------------------------------------


async def test_the_first_pass_ever_records_the_stream_and_publishes_nothing() -> None:
    store, stream = tracking_store(), InMemoryStream()
    await backlog(store, stream, 5)
    reconciler = Reconciler(store, stream, interval=1.0)

    assert await reconciler.run_once() == 0
    assert stream.published == []
    raw = await store.marker(STREAM_MARKER)
    assert raw is not None
    assert StreamMark.load(raw) == StreamMark(stream.identity, 5)


async def test_a_healthy_old_backlog_is_never_published_again() -> None:
    store, stream = tracking_store(), InMemoryStream()
    reconciler = Reconciler(store, stream, interval=1.0)
    await reconciler.run_once()
    tasks = await backlog(store, stream, 20)
    await store.start(tasks[0].id, "w-1")

    for _ in range(5):
        assert await reconciler.run_once() == 0
    # Another process, started later (a restarted poller), agrees.
    assert await Reconciler(store, stream, interval=1.0).run_once() == 0
    assert stream.published == []
    assert reconciler.losses == 0


async def test_after_a_loss_every_queued_and_running_task_is_published_once() -> None:
    store, stream = tracking_store(), InMemoryStream()
    reconciler = Reconciler(store, stream, interval=1.0)
    await reconciler.run_once()
    tasks = await backlog(store, stream, 6)
    await store.start(tasks[0].id, "w-dead")  # running, its worker gone with the stream
    await store.complete(tasks[1].id, {"00": 1})
    await store.fail(tasks[2].id, "bad")

    stream.lose()
    assert await reconciler.run_once() == 4
    assert sorted(stream.published) == sorted(t.id for t in (tasks[0], *tasks[3:]))
    assert reconciler.losses == 1
    for _ in range(3):
        assert await reconciler.run_once() == 0
    assert len(stream.published) == 4


async def test_an_unreadable_marker_counts_as_a_loss() -> None:
    store, stream = tracking_store(), InMemoryStream()
    tasks = await backlog(store, stream, 3)
    store.markers[STREAM_MARKER] = "not json"
    reconciler = Reconciler(store, stream, interval=1.0)

    assert await reconciler.run_once() == 3  # nothing can be stuck for want of a message
    assert sorted(stream.published) == sorted(t.id for t in tasks)
    assert await reconciler.run_once() == 0


async def test_a_poller_restarted_after_the_loss_still_notices() -> None:
    store, stream = tracking_store(), InMemoryStream()
    await Reconciler(store, stream, interval=1.0).run_once()  # the process that saw the stream
    tasks = await backlog(store, stream, 3)
    stream.lose()  # while no process runs

    restarted = Reconciler(store, stream, interval=1.0)
    assert await restarted.run_once() == 3
    assert sorted(stream.published) == sorted(t.id for t in tasks)


async def test_a_rewound_stream_is_repopulated() -> None:
    store, stream = tracking_store(), InMemoryStream()
    reconciler = Reconciler(store, stream, interval=1.0)
    tasks = await backlog(store, stream, 3)
    await reconciler.run_once()
    stream.lose(recreate=False)  # same identity, sequence back to 0

    assert await reconciler.run_once() == 3
    assert sorted(stream.published) == sorted(t.id for t in tasks)


async def test_several_processes_publish_a_loss_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module, "_BATCH", 2)
    store, stream = tracking_store(), InMemoryStream()
    processes = [Reconciler(store, stream, interval=60.0) for _ in range(3)]
    await processes[0].run_once()
    tasks = await backlog(store, stream, 7)

    stream.lose()
    for _ in range(3):
        await asyncio.gather(*(p.run_once() for p in processes))
    assert Counter(stream.published) == Counter(t.id for t in tasks)


async def test_an_interrupted_republish_is_resumed_where_it_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconciler_module, "_BATCH", 2)
    store, stream = tracking_store(), InMemoryStream()
    first = Reconciler(store, stream, interval=60.0)
    await first.run_once()
    tasks = await backlog(store, stream, 7)
    stream.lose()

    publish = stream.publish
    calls = 0

    async def publish_then_fail(batch: list[Task]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # NATS goes away (or the process dies) during the third batch
            raise QueueUnavailableError("NATS went away")
        await publish(batch)

    monkeypatch.setattr(stream, "publish", publish_then_fail)
    with pytest.raises(QueueUnavailableError):
        await first.run_once()
    assert len(stream.published) == 4
    monkeypatch.setattr(stream, "publish", publish)

    # A live owner's unfinished re-publish is left to it ...
    other = Reconciler(store, stream, interval=60.0)
    assert await other.run_once() == 0
    # ... until it has not moved for REPAIR_STALL_SECONDS (its process died): then taken over.
    monkeypatch.setattr(reconciler_module, "REPAIR_STALL_SECONDS", 0.0)
    assert await other.run_once() == 3
    assert Counter(stream.published) == Counter(t.id for t in tasks)
    assert await first.run_once() == 0


async def test_a_second_loss_during_a_republish_starts_it_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconciler_module, "_BATCH", 2)
    store, stream = tracking_store(), InMemoryStream()
    reconciler = Reconciler(store, stream, interval=0.0)  # one batch per pass
    await reconciler.run_once()
    tasks = await backlog(store, stream, 5)
    stream.lose()
    assert await reconciler.run_once() == 2
    stream.lose()
    stream.published.clear()

    while await reconciler.run_once():
        pass
    assert Counter(stream.published) == Counter(t.id for t in tasks)
    assert reconciler.losses == 2


async def test_a_large_republish_is_spread_over_short_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconciler_module, "_BATCH", 3)
    store, stream = tracking_store(), InMemoryStream()
    reconciler = Reconciler(store, stream, interval=0.0)
    await reconciler.run_once()
    tasks = await backlog(store, stream, 10)
    stream.lose()

    per_pass = [await reconciler.run_once() for _ in range(5)]
    assert per_pass == [3, 3, 3, 1, 0]
    assert sorted(stream.published) == sorted(t.id for t in tasks)


async def test_the_queue_noticing_a_loss_triggers_a_check_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, stream = tracking_store(), InMemoryStream()
    reconciler = Reconciler(store, stream, interval=3600.0)
    await reconciler.run_once()
    tasks = await backlog(store, stream, 4)
    await store.start(tasks[0].id, "w-1")
    publish, published = stream.publish, asyncio.Event()

    async def publish_and_tell(batch: list[Task]) -> None:
        await publish(batch)
        published.set()

    monkeypatch.setattr(stream, "publish", publish_and_tell)
    stream.lose()
    stream.notice_loss()  # e.g. a publish got "no stream"; no pass is due for an hour
    await asyncio.wait_for(published.wait(), 5)
    assert sorted(stream.published) == sorted(t.id for t in tasks)
    await reconciler.stop()


class BackfillingStore(InMemoryTaskStore):
    """Counts the index backfills; each listing backfill sets `started`, waits for `release`,
    fails while `failures` lasts, and sets `returned` as it ends."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.failures = failures
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.returned = asyncio.Event()

    async def index_active(self) -> int:
        self.calls["active"] += 1
        return 0

    async def index_listing(self) -> int:
        self.calls["listing"] += 1
        self.started.set()
        await self.release.wait()
        self.returned.set()
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("the task store (Redis at here) could not index")
        return 3


async def test_the_listing_backfill_runs_once_without_holding_the_passes_up() -> None:
    store = BackfillingStore()
    reconciler = Reconciler(store, InMemoryStream(), interval=1.0)
    await reconciler.run_once()  # returns while the backfill still runs
    await store.started.wait()
    await reconciler.run_once()
    assert store.calls == {"active": 1, "listing": 1}
    store.release.set()
    await store.returned.wait()
    await reconciler.run_once()
    await reconciler.run_once()
    assert store.calls == {"active": 1, "listing": 1}
    await reconciler.stop()


async def test_a_failed_listing_backfill_is_started_again_by_the_next_pass() -> None:
    store = BackfillingStore(failures=1)
    store.release.set()
    reconciler = Reconciler(store, InMemoryStream(), interval=1.0)
    await reconciler.run_once()
    await store.returned.wait()  # failed
    store.returned.clear()
    await reconciler.run_once()
    await store.returned.wait()  # succeeded
    await reconciler.run_once()
    assert store.calls == {"active": 1, "listing": 2}
    await reconciler.stop()


async def test_stop_cancels_a_listing_backfill_under_way() -> None:
    store = BackfillingStore()
    reconciler = Reconciler(store, InMemoryStream(), interval=1.0)
    await reconciler.run_once()
    await store.started.wait()
    await reconciler.stop()
    assert not store.returned.is_set()


async def test_unpublished_tasks_are_still_published() -> None:
    store, stream = tracking_store(), InMemoryStream()
    reconciler = Reconciler(store, stream, interval=1.0)
    await reconciler.run_once()
    [lost] = await store.create_many([make_task(created_at=time.time() - 60)])
    assert await reconciler.run_once() == 1
    assert stream.published == [lost.id]
    assert store.tasks[lost.id].status is Status.QUEUED
