"""The HTTP API and TaskService over the in-memory store, driven in-process through ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import structlog
import structlog.testing
from fastapi import FastAPI

from qtask.api.app import create_app
from qtask.application.service import Submission, TaskService
from qtask.circuits.ingestor import CircuitIngestor, limits_from
from qtask.config import LimitsSettings
from qtask.constants import (
    MAX_IDS_PER_READ,
    MSG_BATCH_SUBMITTED,
    MSG_NOT_FOUND,
    MSG_PENDING,
    MSG_SUBMITTED,
)
from qtask.domain.task import Encoding, Status, Task
from qtask.errors import InvalidRequestError, StoreUnavailableError, TaskNotFoundError
from qtask.execution.catalog import aer_only
from qtask.testing import InMemoryTaskStore

MAX_BODY = 4096
MAX_SHOTS = 10_000

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
# Line 4 lacks its semicolon; the parser notices at the start of line 5.
SYNTAX_ERROR = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0]\ncx q[0], q[1];\n'
# Needs the slow ANTLR importer (pi), which runs in a thread when there is no parse pool.
PI_CIRCUIT = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\n'
    "rx(pi/2) q[0];\nc[0] = measure q[0];\n"
)


class Harness:
    def __init__(self, store: InMemoryTaskStore, service: TaskService, app: FastAPI) -> None:
        self.store = store
        self.service = service
        self.app = app


def build(store: Any | None = None, **limits: Any) -> Harness:
    settings = LimitsSettings(max_shots=MAX_SHOTS, **limits)
    memory = store if store is not None else InMemoryTaskStore()
    service = TaskService(
        memory, memory, CircuitIngestor(settings, pool=None), settings, backends=aer_only(settings)
    )
    return Harness(memory, service, create_app(service, max_body_bytes=MAX_BODY))


@pytest.fixture
def harness() -> Harness:
    return build()


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


@pytest.fixture
def store(harness: Harness) -> InMemoryTaskStore:
    return harness.store


def assert_error_body(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"status", "message"}
    assert body["status"] == "error"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert response.headers["content-type"].startswith("application/json")
    return str(body["message"])


async def submit(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/tasks", json=body)


# --- submitting ------------------------------------------------------------------------------


async def test_submit_returns_202_with_exact_body(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await submit(client, qc=BELL)
    assert response.status_code == 202
    body = response.json()
    task_id = body["task_id"]
    assert body == {"task_id": task_id, "message": MSG_SUBMITTED}
    assert body["message"] == "Task submitted successfully."
    assert response.headers["location"] == f"/tasks/{task_id}"
    task = store.tasks[task_id]
    assert task.status is Status.QUEUED
    assert task.source == BELL
    assert task.shots == 1024
    assert task.seed is None
    assert task.info.encoding is Encoding.QASM3


async def test_submit_with_shots_and_seed(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await submit(client, qc=BELL, shots=77, seed=5)
    assert response.status_code == 202
    task = store.tasks[response.json()["task_id"]]
    assert task.shots == 77
    assert task.seed == 5


async def test_quantum_circuit_alias(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    response = await submit(client, quantum_circuit=BELL)
    assert response.status_code == 202
    assert store.tasks[response.json()["task_id"]].source == BELL


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    response = await submit(client, qc=BELL, colour="blue")
    assert response.status_code == 202


async def test_each_submission_gets_a_new_id(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    first = (await submit(client, qc=BELL)).json()["task_id"]
    second = (await submit(client, qc=BELL)).json()["task_id"]
    assert first != second
    assert set(store.tasks) == {first, second}


async def test_slow_path_circuit_is_parsed_in_a_thread(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await submit(client, qc=PI_CIRCUIT)
    assert response.status_code == 202
    task = store.tasks[response.json()["task_id"]]
    assert task.info.encoding is Encoding.QPY
    assert task.program


async def test_qasm2_submission(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    source = (
        'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[2]; '
        "h q[0]; cx q[0],q[1]; measure q -> c;"
    )
    response = await submit(client, qc=source)
    assert response.status_code == 202
    assert store.tasks[response.json()["task_id"]].info.encoding is Encoding.QASM2


# --- reading ---------------------------------------------------------------------------------


async def test_get_pending_task(client: httpx.AsyncClient) -> None:
    task_id = (await submit(client, qc=BELL)).json()["task_id"]
    response = await client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json() == {"status": "pending", "message": MSG_PENDING}
    assert response.json()["message"] == "Task is still in progress."


async def test_get_running_task_is_pending(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    task_id = (await submit(client, qc=BELL)).json()["task_id"]
    [delivery] = await store.fetch(1, timeout=0)
    assert delivery.task.status is Status.RUNNING
    response = await client.get(f"/tasks/{task_id}")
    assert response.json() == {"status": "pending", "message": MSG_PENDING}


async def test_get_completed_task(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    task_id = (await submit(client, qc=BELL)).json()["task_id"]
    await store.complete(task_id, {"00": 3})
    response = await client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json() == {"status": "completed", "result": {"00": 3}}


async def test_get_failed_task(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    task_id = (await submit(client, qc=BELL)).json()["task_id"]
    await store.fail(task_id, "The simulator failed: out of memory")
    response = await client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json() == {
        "status": "error",
        "message": "The simulator failed: out of memory",
    }


async def test_get_unknown_task(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": MSG_NOT_FOUND}
    assert response.json()["message"] == "Task not found."


async def test_unknown_route_uses_the_error_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": MSG_NOT_FOUND}


async def test_wrong_method_uses_the_error_body(client: httpx.AsyncClient) -> None:
    response = await client.delete("/tasks")
    assert response.status_code == 405
    assert_error_body(response)


# --- bad requests: nothing is stored -------------------------------------------------------


async def test_non_json_body(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    response = await client.post(
        "/tasks", content=b"qc=OPENQASM", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in assert_error_body(response)
    assert store.tasks == {}


async def test_empty_body(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    response = await client.post("/tasks", content=b"  ")
    assert response.status_code == 400
    assert "empty" in assert_error_body(response)
    assert store.tasks == {}


@pytest.mark.parametrize("payload", [[{"qc": BELL}], "OPENQASM 3.0;", 42, None])
async def test_json_that_is_not_an_object(
    client: httpx.AsyncClient, store: InMemoryTaskStore, payload: object
) -> None:
    response = await client.post("/tasks", content=orjson.dumps(payload))
    assert response.status_code == 422
    assert "JSON object" in assert_error_body(response)
    assert store.tasks == {}


async def test_missing_qc(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    response = await submit(client, shots=10)
    assert response.status_code == 422
    assert "qc" in assert_error_body(response)
    assert store.tasks == {}


@pytest.mark.parametrize("qc", [123, None, ["OPENQASM 3.0;"], {"src": BELL}, True])
async def test_qc_of_wrong_type(
    client: httpx.AsyncClient, store: InMemoryTaskStore, qc: object
) -> None:
    response = await submit(client, qc=qc)
    assert response.status_code == 422
    assert "qc" in assert_error_body(response)
    assert store.tasks == {}


@pytest.mark.parametrize("shots", [0, -1, MAX_SHOTS + 1])
async def test_shots_out_of_range(
    client: httpx.AsyncClient, store: InMemoryTaskStore, shots: int
) -> None:
    response = await submit(client, qc=BELL, shots=shots)
    assert 400 <= response.status_code < 500
    assert "shots" in assert_error_body(response)
    assert store.tasks == {}


async def test_max_shots_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await submit(client, qc=BELL, shots=MAX_SHOTS)).status_code == 202


@pytest.mark.parametrize("shots", ["5", 5.0, 2.5, True, None])
async def test_shots_of_wrong_type(
    client: httpx.AsyncClient, store: InMemoryTaskStore, shots: object
) -> None:
    response = await submit(client, qc=BELL, shots=shots)
    assert response.status_code == 422
    assert "shots" in assert_error_body(response)
    assert store.tasks == {}


@pytest.mark.parametrize("seed", [-1, 2**63, "7", 1.5])
async def test_bad_seed(client: httpx.AsyncClient, store: InMemoryTaskStore, seed: object) -> None:
    response = await submit(client, qc=BELL, seed=seed)
    assert response.status_code == 422
    assert "seed" in assert_error_body(response)
    assert store.tasks == {}


async def test_body_over_limit(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    source = BELL + "// " + "x" * MAX_BODY + "\n"
    response = await submit(client, qc=source)
    assert response.status_code == 413
    assert str(MAX_BODY) in assert_error_body(response)
    assert store.tasks == {}


async def test_streamed_body_over_limit_without_content_length(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"qc": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    response = await client.post("/tasks", content=chunks())
    assert response.status_code == 413
    assert_error_body(response)
    assert store.tasks == {}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"qc": "OPENQASM 3.0;\xff\xfe"}',  # not UTF-8
        b'{"qc": "OPENQASM 3.0; \\ud800"}',  # a lone surrogate escape
        b'{"qc": "OPENQASM 3.0;\x00"}',  # a raw NUL inside a JSON string
        b'{"qc": "OPENQASM 3.0;\\u0000 qubit q;"}',  # an escaped NUL
    ],
)
async def test_bytes_that_are_not_text_are_400(
    client: httpx.AsyncClient, store: InMemoryTaskStore, raw: bytes
) -> None:
    response = await client.post("/tasks", content=raw)
    assert response.status_code == 400
    assert_error_body(response)
    assert store.tasks == {}


async def test_duplicate_json_keys_take_the_last(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    raw = b'{"qc": "garbage", "shots": 5, "qc": ' + orjson.dumps(BELL) + b', "shots": 7}'
    response = await client.post("/tasks", content=raw)
    assert response.status_code == 202
    task = store.tasks[response.json()["task_id"]]
    assert (task.source, task.shots) == (BELL, 7)


async def test_circuit_syntax_error(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    response = await submit(client, qc=SYNTAX_ERROR)
    assert response.status_code == 400
    message = assert_error_body(response)
    assert "line 5" in message
    assert "column" in message
    assert store.tasks == {}


async def test_empty_circuit(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    response = await submit(client, qc="   ")
    assert response.status_code == 400
    assert "empty" in assert_error_body(response)
    assert store.tasks == {}


async def test_forbidden_include(client: httpx.AsyncClient, store: InMemoryTaskStore) -> None:
    response = await submit(client, qc='OPENQASM 3.0;\ninclude "/etc/passwd";\nqubit q;\n')
    assert response.status_code == 400
    assert "cannot be included" in assert_error_body(response)
    assert store.tasks == {}


async def test_wide_non_clifford_circuit_is_admitted_for_mps(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    # 40 qubits: no statevector fits the limit, so it runs with matrix product state; only
    # running shows whether that fits, so it is not refused at submit.
    source = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[40] q;\nh q[0];\nt q[0];\n'
    response = await submit(client, qc=source)
    assert response.status_code == 202
    [task] = store.tasks.values()
    assert task.info.num_qubits == 40
    assert task.info.clifford is False


async def test_circuit_over_qubit_limit_is_refused(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    source = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[101] q;\nh q[0];\nt q[0];\n'
    response = await submit(client, qc=source)
    assert response.status_code == 422
    assert "101 qubits; the limit is 100" in assert_error_body(response)
    assert store.tasks == {}


async def test_circuit_over_byte_limit_below_body_limit() -> None:
    harness = build(max_circuit_bytes=200)
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await submit(http, qc=BELL + "// " + "x" * 200 + "\n")
    assert response.status_code == 422
    assert "bytes" in assert_error_body(response)
    assert harness.store.tasks == {}


# --- idempotency -------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_task(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/tasks", json={"qc": BELL}, headers=headers)
    second = await client.post("/tasks", json={"qc": BELL, "shots": 5}, headers=headers)
    assert first.status_code == second.status_code == 202
    task_id = first.json()["task_id"]
    assert second.json() == {"task_id": task_id, "message": MSG_SUBMITTED}
    assert second.headers["location"] == f"/tasks/{task_id}"
    assert list(store.tasks) == [task_id]
    assert store.tasks[task_id].idempotency_key == "*:order-42"  # keys off: their own scope
    assert store.tasks[task_id].shots == 1024  # the first submission is what counts


async def test_different_idempotency_keys_make_different_tasks(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    first = await client.post("/tasks", json={"qc": BELL}, headers={"Idempotency-Key": "a"})
    second = await client.post("/tasks", json={"qc": BELL}, headers={"Idempotency-Key": "b"})
    assert first.json()["task_id"] != second.json()["task_id"]
    assert len(store.tasks) == 2


async def test_overlong_idempotency_key(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await client.post(
        "/tasks", json={"qc": BELL}, headers={"Idempotency-Key": "k" * 256}
    )
    assert response.status_code == 422
    assert_error_body(response)
    assert store.tasks == {}


# --- batches -------------------------------------------------------------------------------


async def test_batch_stores_every_task_and_answers_ids_in_order(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    items = [{"qc": BELL, "shots": 10 + i} for i in range(5)] + [{"quantum_circuit": BELL}]
    response = await client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"task_ids", "message"}
    assert body["message"] == MSG_BATCH_SUBMITTED
    ids = body["task_ids"]
    assert len(ids) == len(set(ids)) == 6
    assert [store.tasks[task_id].shots for task_id in ids] == [10, 11, 12, 13, 14, 1024]
    assert all(store.tasks[task_id].status is Status.QUEUED for task_id in ids)
    for task_id in ids:
        read = await client.get(f"/tasks/{task_id}")
        assert read.json() == {"status": "pending", "message": MSG_PENDING}


async def test_batch_with_one_bad_circuit_stores_nothing_and_names_it(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    items = [{"qc": BELL}, {"qc": BELL}, {"qc": SYNTAX_ERROR}, {"qc": BELL}]
    response = await client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 400
    message = assert_error_body(response)
    assert message.startswith("tasks[2]: ")
    assert "line" in message
    assert store.tasks == {}


async def test_batch_item_over_a_limit_keeps_its_status(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    items = [{"qc": BELL}, {"qc": BELL, "shots": MAX_SHOTS + 1}]
    response = await client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 400
    assert assert_error_body(response).startswith("tasks[1]: shots must be between")
    assert store.tasks == {}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"tasks": []}, 422, "'tasks'"),
        ({}, 422, "'tasks' is required"),
        ({"tasks": "OPENQASM 3.0;"}, 422, "'tasks'"),
        ({"tasks": [{"shots": 5}]}, 422, "'tasks.0.qc' is required"),
        ({"tasks": [{"qc": BELL}, {"qc": 7}]}, 422, "'tasks.1.qc'"),
        ([{"qc": BELL}], 422, "JSON object"),
    ],
)
async def test_malformed_batches(
    client: httpx.AsyncClient, store: InMemoryTaskStore, body: Any, status: int, needle: str
) -> None:
    response = await client.post("/tasks/batch", json=body)
    assert response.status_code == status
    assert needle in assert_error_body(response)
    assert store.tasks == {}


async def test_batch_over_the_task_limit_is_413() -> None:
    harness = build(max_batch_tasks=3)
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post("/tasks/batch", json={"tasks": [{"qc": BELL}] * 4})
    assert response.status_code == 413
    assert "at most 3 tasks; got 4" in assert_error_body(response)
    assert harness.store.tasks == {}


async def test_batch_body_limit_is_its_own() -> None:
    settings = LimitsSettings(max_shots=MAX_SHOTS)
    memory = InMemoryTaskStore()
    service = TaskService(
        memory, memory, CircuitIngestor(settings, pool=None), settings, backends=aer_only(settings)
    )
    app = create_app(service, max_body_bytes=MAX_BODY, max_batch_body_bytes=4 * MAX_BODY)
    transport = httpx.ASGITransport(app=app)
    per_item = len(orjson.dumps({"qc": BELL})) + 1
    fitting = [{"qc": BELL}] * (2 * MAX_BODY // per_item)  # over /tasks' limit, under the batch's
    oversized = [{"qc": BELL}] * (5 * MAX_BODY // per_item)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        fits = await http.post("/tasks/batch", json={"tasks": fitting})
        too_big = await http.post("/tasks/batch", json={"tasks": oversized})
    assert fits.status_code == 202
    assert too_big.status_code == 413
    assert "over the limit of 16384 bytes" in assert_error_body(too_big)
    assert len(memory.tasks) == len(fitting)


async def test_batch_idempotency_key_returns_the_first_batch(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    headers = {"Idempotency-Key": "run-7"}
    items = [{"qc": BELL}, {"qc": BELL, "shots": 3}]
    first = await client.post("/tasks/batch", json={"tasks": items}, headers=headers)
    second = await client.post("/tasks/batch", json={"tasks": items}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    ids = first.json()["task_ids"]
    assert sorted(store.tasks) == sorted(ids)
    assert [store.tasks[i].idempotency_key for i in ids] == ["*:run-7/0", "*:run-7/1"]


async def test_get_many_answers_each_id_in_order(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    ids = (await client.post("/tasks/batch", json={"tasks": [{"qc": BELL}] * 3})).json()
    first, second, third = ids["task_ids"]
    await store.complete(first, {"00": 3, "11": 1})
    await store.fail(second, "boom")
    response = await client.get(f"/tasks?ids={third},{first}&ids=missing,{second}")
    assert response.status_code == 200
    assert response.json() == {
        "tasks": [
            {"task_id": third, "status": "pending", "message": MSG_PENDING},
            {"task_id": first, "status": "completed", "result": {"00": 3, "11": 1}},
            {"task_id": "missing", "status": "error", "message": MSG_NOT_FOUND},
            {"task_id": second, "status": "error", "message": "boom"},
        ]
    }


@pytest.mark.parametrize(
    ("query", "needle"),
    [("?ids=", "at least one"), ("?ids=,,", "at least one")],
)
async def test_get_many_without_ids_is_a_clear_error(
    client: httpx.AsyncClient, query: str, needle: str
) -> None:
    response = await client.get(f"/tasks{query}")
    assert 400 <= response.status_code < 500
    assert needle in assert_error_body(response)


async def test_get_many_over_the_limit(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/tasks?ids=" + ",".join(f"t{i}" for i in range(MAX_IDS_PER_READ + 1))
    )
    assert response.status_code == 400
    assert f"At most {MAX_IDS_PER_READ} task ids" in assert_error_body(response)


async def test_get_of_the_batch_path_is_not_a_task(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/batch")
    assert response.status_code == 404
    assert assert_error_body(response) == MSG_NOT_FOUND


# --- cancelling ----------------------------------------------------------------------------


async def test_delete_cancels_a_queued_task(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    task_id = (await submit(client, qc=BELL)).json()["task_id"]
    cancelled = {"status": "error", "message": "Task was cancelled."}
    response = await client.delete(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json() == cancelled
    assert (await client.get(f"/tasks/{task_id}")).json() == cancelled
    again = await client.delete(f"/tasks/{task_id}")
    assert (again.status_code, again.json()) == (200, cancelled)
    assert store.tasks[task_id].status is Status.FAILED


async def test_delete_of_a_running_task_cancels_it_and_of_an_ended_one_is_409(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    running = (await submit(client, qc=BELL)).json()["task_id"]
    done = (await submit(client, qc=BELL)).json()["task_id"]
    await store.start(running, "w")
    await store.complete(done, {"00": 1})
    first = await client.delete(f"/tasks/{running}")
    assert first.status_code == 200
    assert first.json() == {"status": "error", "message": "Task was cancelled."}
    await store.complete(running, {"00": 1})  # the run's late result is refused
    assert (await client.get(f"/tasks/{running}")).json() == first.json()
    second = await client.delete(f"/tasks/{done}")
    assert second.status_code == 409
    assert "already ended (completed)" in assert_error_body(second)
    assert (await client.get(f"/tasks/{done}")).json()["status"] == "completed"


async def test_delete_of_an_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/tasks/no-such-task")
    assert response.status_code == 404
    assert assert_error_body(response) == MSG_NOT_FOUND


# --- request ids and the request log line ----------------------------------------------------


async def test_every_answer_has_a_request_id_and_one_log_line(client: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs() as logs:
        submitted = await submit(client, qc=BELL)
        missing = await client.get("/tasks/nope")
    ids = [submitted.headers["x-request-id"], missing.headers["x-request-id"]]
    assert len(set(ids)) == 2
    lines = [line for line in logs if line["event"] == "http_request"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/tasks", 202),
        ("GET", "/tasks/nope", 404),
    ]
    assert [line["request_id"] for line in lines] == ids
    assert all(line["duration_ms"] >= 0 for line in lines)
    assert BELL not in repr(logs)  # circuits never reach the logs


@pytest.mark.parametrize(("sent", "kept"), [("abc-123.x", True), ("bad id\twith space", False)])
async def test_a_callers_request_id_is_kept_when_sane(
    client: httpx.AsyncClient, sent: str, kept: bool
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": sent})
    assert (response.headers["x-request-id"] == sent) is kept


# --- metrics ---------------------------------------------------------------------------------


def _sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def test_metrics_count_submissions_queue_and_requests(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    before = (await client.get("/metrics")).text
    await submit(client, qc=BELL)
    await client.post("/tasks/batch", json={"tasks": [{"qc": BELL}] * 3})
    task_id = (await submit(client, qc=BELL)).json()["task_id"]
    await client.get(f"/tasks/{task_id}")
    await client.delete(f"/tasks/{task_id}")
    await client.get(f"/tasks/{task_id}?wait=1")  # ended: answered at once, counted apart
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    submitted = "qtask_tasks_submitted_total"
    assert _sample(after, submitted) - _sample(before, submitted) == 5
    assert (
        _sample(after, "qtask_tasks_cancelled_total")
        - _sample(before, "qtask_tasks_cancelled_total")
        == 1
    )
    assert _sample(after, "qtask_tasks", 'status="queued"') == 4
    assert _sample(after, "qtask_tasks", 'status="running"') == 0
    read = 'method="GET",route="/tasks/{task_id}",status="200"'
    assert _sample(after, "qtask_http_requests_total", read) >= 1
    waited = 'method="GET",route="/tasks/{task_id}?wait",status="200"'
    waits = _sample(after, "qtask_http_requests_total", waited)
    assert waits - _sample(before, "qtask_http_requests_total", waited) == 1
    assert task_id not in after  # labels are route templates, never ids


# --- health and readiness ------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_ready_without_checks(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {}}


async def test_ready_reports_a_failing_check() -> None:
    async def ok() -> str:
        return "ok"

    async def broken() -> str:
        raise RuntimeError("disk gone")

    harness = build()
    app = create_app(
        harness.service, max_body_bytes=MAX_BODY, ready_checks={"store": ok, "pool": broken}
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/ready")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"store": "ok", "pool": "failing: disk gone"},
    }


# --- store failures --------------------------------------------------------------------------


class BrokenStore(InMemoryTaskStore):
    async def create_many(self, tasks: Any, *, max_pending: int = 0) -> list[Task]:
        raise StoreUnavailableError("database is locked")


async def test_store_unavailable_is_503() -> None:
    harness = build(store=BrokenStore())
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await submit(http, qc=BELL)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    message = assert_error_body(response)
    assert "database is locked" not in message


# --- the service without HTTP --------------------------------------------------------------


async def test_service_submit_and_get(harness: Harness) -> None:
    task = await harness.service.submit(Submission(BELL, 10, 3))
    assert await harness.service.get(task.id) == task
    with pytest.raises(TaskNotFoundError):
        await harness.service.get("missing")


async def test_service_rejects_bad_shots_before_parsing(harness: Harness) -> None:
    with pytest.raises(InvalidRequestError, match="shots"):
        await harness.service.submit(Submission("not a circuit", 0))
    assert harness.store.tasks == {}


async def test_service_submit_many_is_all_or_nothing(harness: Harness) -> None:
    with pytest.raises(InvalidRequestError):
        await harness.service.submit_many([Submission(BELL, 10), Submission(SYNTAX_ERROR, 10)])
    assert harness.store.tasks == {}
    stored = await harness.service.submit_many([Submission(BELL, 10), Submission(BELL, 20)])
    assert [t.shots for t in stored] == [10, 20]
    assert len(harness.store.tasks) == 2


def test_limits_from_settings() -> None:
    limits = limits_from(LimitsSettings(max_statevector_mb=2))
    assert limits.max_statevector_bytes == 2 << 20
    assert limits.max_qubits == 100


async def test_single_quoted_include_is_accepted(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    source = "OPENQASM 3.0;\ninclude 'stdgates.inc';\nqubit q;\nbit c;\nh q;\nc = measure q;\n"
    try:
        response = await submit(client, qc=source)
    except BaseException as exc:  # the escaping panic becomes an ordinary test failure
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        pytest.fail(f"the request raised {type(exc).__name__}: {exc}")
    assert response.status_code == 202
    assert len(store.tasks) == 1


async def test_client_disconnect_mid_body_is_not_an_internal_error() -> None:

    from qtask.api.app import create_app
    from qtask.application.service import TaskService
    from qtask.circuits.ingestor import CircuitIngestor
    from qtask.config import LimitsSettings
    from qtask.testing import InMemoryTaskStore

    store = InMemoryTaskStore()
    service = TaskService(
        store,
        store,
        CircuitIngestor(LimitsSettings(), None),
        LimitsSettings(),
        backends=aer_only(LimitsSettings()),
    )
    app = create_app(service, max_body_bytes=1 << 20)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/tasks", "raw_path": b"/tasks", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    app.state.service = service
    await app(scope, receive, send)  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    assert store.tasks == {}


async def test_ready_answers_503_when_a_check_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qtask.runtime.health.READY_CHECK_TIMEOUT_SECONDS", 0.1)

    async def ok() -> str:
        return "ok"

    async def hangs() -> str:
        await asyncio.sleep(3600)
        return "never"

    harness = build()
    app = create_app(
        harness.service, max_body_bytes=MAX_BODY, ready_checks={"store": ok, "queue": hangs}
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await asyncio.wait_for(http.get("/ready"), 5)
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"store": "ok", "queue": "failing: no answer within 0.1 s"},
    }
