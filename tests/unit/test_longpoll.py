"""Long polls, listings and circuit read-back: the waiter registry, the service and the routes,
over the in-memory store (which notifies ends as the embedded store does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from qtask.api.app import create_app
from qtask.application.listing import decode_cursor, encode_cursor
from qtask.application.service import Submission, TaskService
from qtask.application.waiters import BatchedReads, Waiters
from qtask.constants import MSG_CANCELLED, MSG_NOT_FOUND, MSG_PENDING
from qtask.domain.task import Status, TaskOutcome
from qtask.errors import InvalidRequestError, TaskNotFoundError
from qtask.testing import InMemoryTaskStore
from qtask_testkit import CountingStore, in_memory_service

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)


@pytest.fixture
def store() -> InMemoryTaskStore:
    return InMemoryTaskStore()


@pytest.fixture
def service(store: InMemoryTaskStore) -> TaskService:
    return in_memory_service(store)


@pytest.fixture
async def client(service: TaskService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service, max_body_bytes=1 << 16))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def submit(service: TaskService, owner: str | None = None) -> str:
    return (await service.submit(Submission(BELL, 10), owner=owner)).id


async def started(task: asyncio.Task[object]) -> None:
    """Let the waiting task reach its wait (it registers before its first read)."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()


# --- the registry ----------------------------------------------------------------------------


async def test_a_watch_is_woken_by_an_end_of_one_of_its_ids_only() -> None:
    waiters = Waiters()
    with waiters.watch(["a", "b"]) as watch:
        waiting = asyncio.create_task(watch.wait())
        waiters.ended(["c"])
        await asyncio.sleep(0)
        assert not waiting.done()
        waiters.ended(["b"])
        await asyncio.wait_for(waiting, 1)
    assert waiters.watched == 0  # leaving the block forgets the watch


async def test_an_end_before_the_wait_is_not_lost() -> None:
    waiters = Waiters()
    with waiters.watch(["a"]) as watch:
        waiters.ended(["a"])  # between the store read and the wait
        await asyncio.wait_for(watch.wait(), 1)


async def test_resync_wakes_every_watch() -> None:
    waiters = Waiters()
    with waiters.watch(["a"]) as first, waiters.watch(["b"]) as second:
        waiters.resync()
        await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), 1)


async def test_a_forgotten_id_no_longer_wakes_the_watch() -> None:
    waiters = Waiters()
    with waiters.watch(["a", "b"]) as watch:
        waiters.forget(watch, ["a", "x"])
        waiters.ended(["a"])
        waiting = asyncio.create_task(watch.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        assert waiters.watched == 1
        waiters.ended(["b"])
        await asyncio.wait_for(waiting, 1)


async def test_reads_asked_in_one_turn_are_one_store_call() -> None:
    calls: list[list[str]] = []

    async def outcomes(ids: object) -> dict[str, TaskOutcome]:
        assert isinstance(ids, list)
        calls.append(ids)
        return {i: TaskOutcome(i, Status.COMPLETED) for i in ids if i != "gone"}

    reads = BatchedReads(outcomes)
    first, second, third = await asyncio.gather(
        reads.read(["a", "b"]), reads.read(["b", "gone"]), reads.read(["c"])
    )
    assert calls == [["a", "b", "gone", "c"]]
    assert set(first) == {"a", "b"}
    assert set(second) == {"b"}
    assert set(third) == {"c"}
    await reads.read(["d"])  # a later turn: a call of its own
    assert calls[1:] == [["d"]]


async def test_a_failed_batched_read_fails_every_reader_and_one_leaving_spares_the_rest() -> None:
    release = asyncio.Event()

    async def outcomes(ids: object) -> dict[str, TaskOutcome]:
        await release.wait()
        raise RuntimeError("store down")

    reads = BatchedReads(outcomes)
    leaving = asyncio.create_task(reads.read(["a"]))
    staying = asyncio.create_task(reads.read(["b"]))
    await asyncio.sleep(0)
    leaving.cancel()
    release.set()
    with pytest.raises(RuntimeError, match="store down"):
        await staying
    assert leaving.cancelled()


# --- waiting ---------------------------------------------------------------------------------


async def test_wait_answers_when_the_task_completes(
    service: TaskService, store: InMemoryTaskStore
) -> None:
    task_id = await submit(service)
    waiting = asyncio.create_task(service.wait(task_id, None, 30))
    await started(waiting)
    await store.complete(task_id, {"00": 6, "11": 4})
    outcome = await asyncio.wait_for(waiting, 1)
    assert outcome.status is Status.COMPLETED
    assert outcome.result == {"00": 6, "11": 4}


async def test_wait_answers_when_the_task_is_cancelled(service: TaskService) -> None:
    task_id = await submit(service)
    waiting = asyncio.create_task(service.wait(task_id, None, 30))
    await started(waiting)
    await service.cancel(task_id)
    outcome = await asyncio.wait_for(waiting, 1)
    assert (outcome.status, outcome.error) == (Status.FAILED, MSG_CANCELLED)


async def test_wait_times_out_with_the_task_still_pending(service: TaskService) -> None:
    task_id = await submit(service)
    outcome = await service.wait(task_id, None, 0.05)
    assert outcome.status is Status.QUEUED


async def test_wait_after_a_missed_notice_rereads_on_resync(
    service: TaskService, store: InMemoryTaskStore
) -> None:
    task_id = await submit(service)
    waiting = asyncio.create_task(service.wait(task_id, None, 30))
    await started(waiting)
    listeners, store._listeners = store._listeners, []  # the notice is lost
    await store.complete(task_id, {"0": 1})
    store._listeners = listeners
    await asyncio.sleep(0.01)
    assert not waiting.done()
    store.lose_notices()  # the subscription came back: everyone re-reads
    assert (await asyncio.wait_for(waiting, 1)).status is Status.COMPLETED


async def test_wait_many_answers_when_all_have_ended(
    service: TaskService, store: InMemoryTaskStore
) -> None:
    first, second = await submit(service), await submit(service)
    waiting = asyncio.create_task(service.wait_many([first, second, "unknown"], None, 30))
    await started(waiting)
    await store.complete(first, {"0": 1})
    await asyncio.sleep(0.01)
    assert not waiting.done()  # one is still pending
    await store.fail(second, "boom")
    found = await asyncio.wait_for(waiting, 1)
    assert {i: t.status for i, t in found.items()} == {
        first: Status.COMPLETED,
        second: Status.FAILED,
    }


async def test_wait_many_rereads_only_the_tasks_still_pending() -> None:
    store = CountingStore()
    service = in_memory_service(store)
    ids = [await submit(service) for _ in range(10)]
    asked = store.asked
    waiting = asyncio.create_task(service.wait_many(ids, None, 30))
    await started(waiting)
    for done in ids[:8]:  # eight end in separate bursts, each a wake-up and a re-read
        await store.complete(done, {"0": 1})
        await asyncio.sleep(0.005)
    await store.fail(ids[8], "boom")  # ends and is removed before the re-read: left out,
    await store.remove([store.tasks[ids[8]]])  # as a first read would leave it out
    await store.fail(ids[9], "boom")
    found = await asyncio.wait_for(waiting, 1)
    assert {i: t.status for i, t in found.items()} == {
        **{i: Status.COMPLETED for i in ids[:8]},
        ids[9]: Status.FAILED,
    }
    assert asked[0] == ids
    assert len(asked) > 5  # woken several times
    # Each re-read asks only for tasks said to have ended that were pending at the read before
    # it: every task is read about twice in all (once at first, once after its end), where
    # re-reading every pending task on each wake-up would read 10 + 9 + 8 + ...
    still_pending = set(ids)
    for read, pending in zip(asked, store.pending, strict=True):
        assert set(read) <= still_pending
        still_pending -= set(read) - set(pending)
    assert sum(map(len, asked[1:])) <= len(ids) + 1  # ids[8] may be read after each notice


async def test_a_watch_says_which_ids_ended_and_a_resync_says_any() -> None:
    waiters = Waiters()
    with waiters.watch(["a", "b", "c"]) as watch:
        waiters.ended(["a", "x"])
        waiters.ended(["c"])
        assert await asyncio.wait_for(watch.wait(), 1) == {"a", "c"}
        waiters.ended(["b"])
        waiters.resync()
        assert await asyncio.wait_for(watch.wait(), 1) is None
        waiters.ended(["b"])
        assert await asyncio.wait_for(watch.wait(), 1) == {"b"}


async def test_wait_for_another_keys_task_is_not_found(service: TaskService) -> None:
    task_id = await submit(service, owner="alice")
    with pytest.raises(TaskNotFoundError):
        await service.wait(task_id, "bob", 30)


@pytest.mark.parametrize("wait", [0, -1, 60.5])
async def test_wait_out_of_range_is_refused(service: TaskService, wait: float) -> None:
    with pytest.raises(InvalidRequestError, match="wait must be more than 0 and at most 60"):
        await service.wait("x", None, wait)


async def test_http_wait_answers_the_completed_body(
    client: httpx.AsyncClient, service: TaskService, store: InMemoryTaskStore
) -> None:
    task_id = await submit(service)
    waiting = asyncio.create_task(client.get(f"/tasks/{task_id}", params={"wait": 30}))
    await asyncio.sleep(0.05)
    await store.complete(task_id, {"11": 10})
    response = await asyncio.wait_for(waiting, 2)
    assert response.json() == {"status": "completed", "result": {"11": 10}}


async def test_http_wait_timeout_answers_the_exact_pending_body(
    client: httpx.AsyncClient, service: TaskService
) -> None:
    task_id = await submit(service)
    response = await client.get(f"/tasks/{task_id}", params={"wait": 0.1})
    assert response.status_code == 200
    assert response.json() == {"status": "pending", "message": MSG_PENDING}


@pytest.mark.parametrize("wait", ["0", "-3", "61", "abc"])
async def test_http_wait_out_of_range_is_a_4xx_naming_wait(
    client: httpx.AsyncClient, wait: str
) -> None:
    response = await client.get("/tasks/x", params={"wait": wait})
    assert response.status_code == 422
    assert "wait" in response.json()["message"]


# --- listing ---------------------------------------------------------------------------------


async def test_listing_is_newest_first_and_pages_with_a_stable_cursor(
    service: TaskService,
) -> None:
    ids = [await submit(service) for _ in range(5)]
    first = await service.list_tasks(None, limit=2)
    assert [t.outcome.id for t in first.tasks] == ids[::-1][:2]
    newer = await submit(service)  # added while paging: the next pages do not shift
    second = await service.list_tasks(None, limit=2, cursor=first.next_cursor)
    third = await service.list_tasks(None, limit=2, cursor=second.next_cursor)
    assert [t.outcome.id for t in second.tasks + third.tasks] == ids[::-1][2:]
    assert third.next_cursor is None
    assert (await service.list_tasks(None, limit=1)).tasks[0].outcome.id == newer


async def test_listing_filters_by_the_api_status_names(
    service: TaskService, store: InMemoryTaskStore
) -> None:
    done, failed, queued = await submit(service), await submit(service), await submit(service)
    await store.complete(done, {"0": 1})
    await store.fail(failed, "boom")

    async def listed(*statuses: str) -> set[str]:
        return {t.outcome.id for t in (await service.list_tasks(None, statuses)).tasks}

    assert await listed("pending") == {queued}
    assert await listed("completed") == {done}
    assert await listed("error") == {failed}
    assert await listed("completed", "error") == {done, failed}
    with pytest.raises(InvalidRequestError, match="Unknown status queued"):
        await listed("queued")


async def test_listing_shows_a_key_its_own_tasks_only(service: TaskService) -> None:
    alice = await submit(service, owner="alice")
    bob = await submit(service, owner="bob")
    assert [t.outcome.id for t in (await service.list_tasks("alice")).tasks] == [alice]
    assert [t.outcome.id for t in (await service.list_tasks("bob")).tasks] == [bob]
    assert {t.outcome.id for t in (await service.list_tasks(None)).tasks} == {alice, bob}


def test_a_cursor_round_trips_and_a_forged_one_is_refused() -> None:
    position = (1764500000.123456, "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc")
    assert decode_cursor(encode_cursor(position)) == position
    with pytest.raises(InvalidRequestError, match="cursor"):
        decode_cursor("not a cursor!")


async def test_http_listing_body(client: httpx.AsyncClient, service: TaskService) -> None:
    first, second = await submit(service), await submit(service)
    body = (await client.get("/tasks", params={"limit": 1})).json()
    assert set(body) == {"tasks", "next_cursor"}
    (item,) = body["tasks"]
    assert item == {
        "task_id": second,
        "created_at": item["created_at"],
        "status": "pending",
        "message": MSG_PENDING,
    }
    rest = (await client.get("/tasks", params={"cursor": body["next_cursor"]})).json()
    assert [t["task_id"] for t in rest["tasks"]] == [first]
    assert rest["next_cursor"] is None
    refused = await client.get("/tasks", params={"status": "nope"})
    assert refused.status_code == 400
    mixed = await client.get("/tasks", params={"ids": first, "status": "pending"})
    assert mixed.status_code == 400
    assert "listings" in mixed.json()["message"]
    waited = await client.get("/tasks", params={"wait": 1})
    assert waited.status_code == 400
    assert "ids=" in waited.json()["message"]


# --- circuit read-back -----------------------------------------------------------------------


async def test_http_circuit_is_the_submitted_text(
    client: httpx.AsyncClient, service: TaskService
) -> None:
    task_id = await submit(service)
    response = await client.get(f"/tasks/{task_id}/circuit")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == BELL
    missing = await client.get("/tasks/nope/circuit")
    assert missing.status_code == 404
    assert missing.json() == {"status": "error", "message": MSG_NOT_FOUND}


async def test_circuit_of_another_keys_task_is_not_found(service: TaskService) -> None:
    task_id = await submit(service, owner="alice")
    assert await service.circuit(task_id, "alice") == BELL
    with pytest.raises(TaskNotFoundError):
        await service.circuit(task_id, "bob")
