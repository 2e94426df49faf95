"""Per-shot results (`"memory": true`): the request field, its limit, where the worker keeps the
shots (record or result object) and the bodies that show them, over in-memory fakes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from qtask.api.app import create_app
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings, WorkerSettings
from qtask.domain.object_keys import result_key
from qtask.domain.task import Task
from qtask.execution.items import RunItem, RunOutcome
from qtask.service import TaskService
from qtask.testing import InMemoryObjectStore, InMemoryTaskStore
from qtask.worker.runner import Worker
from qtask_testkit import OnceQueue, make_task

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
# Measures nothing: the worker measures both qubits, so it counts 2 qubits + 0 bits.
UNMEASURED = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0];\ncx q[0], q[1];\n'
MAX_MEMORY_BITS = 2000


class Api:
    def __init__(self, objects: InMemoryObjectStore | None = None) -> None:
        settings = LimitsSettings(max_memory_bits=MAX_MEMORY_BITS)
        self.store = InMemoryTaskStore()
        self.objects = objects
        self.service = TaskService(
            self.store, self.store, CircuitIngestor(settings, pool=None), settings, objects
        )
        self.app = create_app(self.service, max_body_bytes=1 << 16)


@pytest.fixture
def api() -> Api:
    return Api()


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/tasks", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


# --- submitting -----------------------------------------------------------------------------


async def test_memory_true_is_stored_on_the_task(client: httpx.AsyncClient, api: Api) -> None:
    asked = await submit(client, qc=BELL, shots=10, memory=True)
    plain = await submit(client, qc=BELL, shots=10)
    assert api.store.tasks[asked].memory is True
    assert api.store.tasks[plain].memory is False


@pytest.mark.parametrize("value", ["yes", 1, None])
async def test_memory_must_be_a_boolean(client: httpx.AsyncClient, api: Api, value: object) -> None:
    response = await client.post("/tasks", json={"qc": BELL, "memory": value})
    assert response.status_code == 422
    assert "memory" in response.json()["message"]
    assert api.store.tasks == {}


async def test_memory_over_the_limit_is_422_naming_the_limit(
    client: httpx.AsyncClient, api: Api
) -> None:
    # 1001 shots x 2 bits = 2002 > 2000.
    response = await client.post("/tasks", json={"qc": BELL, "shots": 1001, "memory": True})
    assert response.status_code == 422
    message = response.json()["message"]
    assert "limits.max_memory_bits" in message
    assert "2000" in message
    assert "1001 x 2 = 2002" in message
    assert api.store.tasks == {}


async def test_memory_at_the_limit_and_counts_past_it_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    await submit(client, qc=BELL, shots=1000, memory=True)  # exactly 2000
    await submit(client, qc=BELL, shots=5000)  # no memory asked: the limit does not apply


async def test_an_unmeasured_circuit_counts_its_qubits(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json={"qc": UNMEASURED, "shots": 1001, "memory": True})
    assert response.status_code == 422
    assert "1001 x 2" in response.json()["message"]


async def test_batch_item_over_the_memory_limit_fails_the_batch(
    client: httpx.AsyncClient, api: Api
) -> None:
    items = [{"qc": BELL, "shots": 10, "memory": True}, {"qc": BELL, "shots": 1001, "memory": True}]
    response = await client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 422
    assert response.json()["message"].startswith("tasks[1]: ")
    assert api.store.tasks == {}


async def test_batch_items_keep_their_own_memory_flag(client: httpx.AsyncClient, api: Api) -> None:
    items = [{"qc": BELL, "shots": 10, "memory": True}, {"qc": BELL}]
    response = await client.post("/tasks/batch", json={"tasks": items})
    ids = response.json()["task_ids"]
    assert [api.store.tasks[i].memory for i in ids] == [True, False]


# --- reading ----------------------------------------------------------------------------------


async def test_completed_body_has_memory_only_when_asked(
    client: httpx.AsyncClient, api: Api
) -> None:
    asked = await submit(client, qc=BELL, shots=3, memory=True)
    plain = await submit(client, qc=BELL, shots=3)
    await api.store.complete(asked, {"00": 2, "11": 1}, memory=["00", "11", "00"])
    await api.store.complete(plain, {"00": 3})
    assert (await client.get(f"/tasks/{asked}")).json() == {
        "status": "completed",
        "result": {"00": 2, "11": 1},
        "memory": ["00", "11", "00"],
    }
    # Byte for byte as before memory existed.
    plain_body = await client.get(f"/tasks/{plain}")
    assert plain_body.content == b'{"status":"completed","result":{"00":3}}'
    many = (await client.get("/tasks", params={"ids": f"{asked},{plain}"})).json()["tasks"]
    assert many[0]["memory"] == ["00", "11", "00"]
    assert "memory" not in many[1]
    waited = (await client.get(f"/tasks/{asked}", params={"wait": 1})).json()
    assert waited["memory"] == ["00", "11", "00"]


async def test_pending_body_of_a_memory_task_is_unchanged(client: httpx.AsyncClient) -> None:
    task_id = await submit(client, qc=BELL, shots=10, memory=True)
    body = (await client.get(f"/tasks/{task_id}")).json()
    assert body == {"status": "pending", "message": "Task is still in progress."}


async def test_listings_leave_memory_out(client: httpx.AsyncClient, api: Api) -> None:
    task_id = await submit(client, qc=BELL, shots=1, memory=True)
    await api.store.complete(task_id, {"00": 1}, memory=["00"])
    [listed] = (await client.get("/tasks")).json()["tasks"]
    assert listed["result"] == {"00": 1}
    assert "memory" not in listed


async def test_memory_is_read_from_the_result_object() -> None:
    objects = InMemoryObjectStore()
    api = Api(objects)
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        task_id = await submit(client, qc=BELL, shots=2, memory=True)
        document = {"result": {"11": 2}, "memory": ["11", "11"]}
        await objects.put(result_key(task_id), orjson.dumps(document))
        await api.store.complete(task_id, {"11": 2})  # the record holds no shots
        body = (await client.get(f"/tasks/{task_id}")).json()
    assert body == {"status": "completed", "result": {"11": 2}, "memory": ["11", "11"]}


# --- the worker ---------------------------------------------------------------------------------


class _MemoryPool:
    """Answers every item with all shots "01", and the shots too when the item asks."""

    size = 1

    def __init__(self) -> None:
        self.items: list[RunItem] = []

    async def call(self, items: list[RunItem], timeout: float) -> list[RunOutcome]:
        self.items += items
        return [
            RunOutcome(
                item.task_id,
                counts={"01": item.shots},
                memory=["01"] * item.shots if item.memory else None,
            )
            for item in items
        ]

    async def close(self) -> None:
        return None


async def _run(store: InMemoryTaskStore, objects: InMemoryObjectStore | None, *tasks: Task) -> None:
    for task in tasks:
        await store.create(task)
    deliveries = await store.fetch(len(tasks), timeout=0)
    pool = _MemoryPool()
    settings = WorkerSettings(processes=1, max_attempts=3, task_timeout_s=5.0, batch_size=8)
    worker = Worker(store, OnceQueue(deliveries), pool, settings, objects=objects)  # type: ignore[arg-type]
    worker.start()
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not all(store.tasks[t.id].status.terminal for t in tasks):
            assert asyncio.get_running_loop().time() < deadline, "tasks did not complete"
            await asyncio.sleep(0.01)
    finally:
        await worker.stop(grace=1.0)
    assert [item.memory for item in pool.items] == [t.memory for t in tasks]


async def test_worker_keeps_memory_in_the_record_without_an_object_store() -> None:
    store = InMemoryTaskStore()
    asked = make_task(shots=3, memory=True)
    plain = make_task(shots=3)
    await _run(store, None, asked, plain)
    assert await store.memories([asked.id, plain.id]) == {asked.id: ["01", "01", "01"]}


async def test_worker_puts_memory_in_the_result_object_not_the_record() -> None:
    store = InMemoryTaskStore()
    objects = InMemoryObjectStore()
    asked = make_task(shots=2, memory=True, result_object="results/a.json")
    plain = make_task(shots=2, result_object="results/b.json")
    await _run(store, objects, asked, plain)
    assert await store.memories([asked.id, plain.id]) == {}
    assert orjson.loads(objects.objects["results/a.json"])["memory"] == ["01", "01"]
    assert "memory" not in orjson.loads(objects.objects["results/b.json"])


async def test_memory_lost_from_the_result_object_reads_null() -> None:
    # A refused duplicate run's object was written back from the record, without shots.
    objects = InMemoryObjectStore()
    api = Api(objects)
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        task_id = await submit(client, qc=BELL, shots=2, memory=True)
        await objects.put(result_key(task_id), orjson.dumps({"result": {"11": 2}}))
        await api.store.complete(task_id, {"11": 2})
        body = (await client.get(f"/tasks/{task_id}")).json()
    assert body == {"status": "completed", "result": {"11": 2}, "memory": None}


class _RunNumberPool:
    """Run n answers every shot with n's two-bit string ("00", then "01", ...)."""

    size = 1

    def __init__(self) -> None:
        self.runs = 0

    async def call(self, items: list[RunItem], timeout: float) -> list[RunOutcome]:
        outcomes = []
        for item in items:
            bits = f"{self.runs:02b}"
            outcomes.append(
                RunOutcome(item.task_id, counts={bits: item.shots}, memory=[bits] * item.shots)
            )
            self.runs += 1
        return outcomes

    async def close(self) -> None:
        return None


async def test_a_duplicate_run_keeps_the_first_runs_shots_in_the_result_object() -> None:
    store = InMemoryTaskStore()
    objects = InMemoryObjectStore()
    task = await store.create(make_task(shots=2, memory=True, result_object="results/d.json"))
    [first] = await store.fetch(1, timeout=0)
    store.expire_lease(task.id)  # handed out again while the first run holds it
    [second] = await store.fetch(1, timeout=0)
    pool = _RunNumberPool()
    settings = WorkerSettings(processes=1, max_attempts=3, task_timeout_s=5.0, batch_size=8)
    worker = Worker(store, OnceQueue([first, second]), pool, settings, objects=objects)  # type: ignore[arg-type]
    worker.start()
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while pool.runs < 2 or worker.in_flight:
            assert asyncio.get_running_loop().time() < deadline, "the runs did not finish"
            await asyncio.sleep(0.01)
    finally:
        await worker.stop(grace=1.0)
    done = store.tasks[task.id]
    document = orjson.loads(objects.objects["results/d.json"])
    assert document["result"] == done.result
    assert dict(Counter(document["memory"])) == done.result
