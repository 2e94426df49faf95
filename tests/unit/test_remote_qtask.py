"""The `qtask` remote backend's HTTP calls and its mapping of answers, on httpx.MockTransport."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest

from qtask.config import LimitsSettings
from qtask.config_backends import QtaskBackendSettings
from qtask.domain.remote import RemoteState
from qtask.domain.task import Task, new_task_id
from qtask.errors import RemoteRejectedError, RemoteUnavailableError
from qtask.execution.remote_qtask import QtaskRemoteBackend
from qtask_testkit import BELL, BELL_INFO


def backend(handler: httpx.MockTransport, **options: object) -> QtaskRemoteBackend:
    settings = QtaskBackendSettings(type="qtask", url="http://b.example", **options)  # type: ignore[arg-type]
    return QtaskRemoteBackend("remote", settings, LimitsSettings(), transport=handler)


def task(**changes: object) -> Task:
    made = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=300, backend="remote")
    return replace(made, **changes)  # type: ignore[arg-type]


async def test_submit_posts_the_source_with_the_task_id_as_idempotency_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            202, json={"task_id": "b-1", "message": "Task submitted successfully."}
        )

    monkeypatch.setenv("B_KEY", "secret")
    remote = backend(httpx.MockTransport(answer), api_key_env="B_KEY", remote_backend="aer")
    sent = task(seed=7, memory=True)
    assert await remote.submit(sent) == "b-1"
    [request] = seen
    assert request.headers["Idempotency-Key"] == sent.id
    assert request.headers["Authorization"] == "Bearer secret"
    assert json.loads(request.content) == {
        "qc": BELL,
        "shots": 300,
        "seed": 7,
        "memory": True,
        "backend": "aer",
    }
    await remote.close()


async def test_submit_refused_with_4xx_is_final_and_5xx_or_no_answer_is_retryable() -> None:
    refuse = backend(
        httpx.MockTransport(lambda r: httpx.Response(422, json={"message": "too wide"}))
    )
    with pytest.raises(RemoteRejectedError, match="too wide"):
        await refuse.submit(task())
    busy = backend(httpx.MockTransport(lambda r: httpx.Response(503, json={"message": "x"})))
    with pytest.raises(RemoteUnavailableError, match="503"):
        await busy.submit(task())

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = backend(httpx.MockTransport(unreachable))
    with pytest.raises(RemoteUnavailableError, match="cannot be reached"):
        await down.submit(task())


async def test_statuses_read_every_job_in_one_call_and_map_each_body() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "tasks": [
                    {"task_id": "a", "status": "completed", "result": {"00": 3}},
                    {"task_id": "b", "status": "error", "message": "bad circuit"},
                    {"task_id": "c", "status": "pending", "message": "Task is still in progress."},
                    {"task_id": "d", "status": "error", "message": "Task not found."},
                ]
            },
        )

    found = await backend(httpx.MockTransport(answer)).statuses(["a", "b", "c", "d"])
    [request] = seen
    assert request.url.params["ids"] == "a,b,c,d"
    assert found["a"].state is RemoteState.DONE
    assert found["a"].counts == {"00": 3}
    assert (found["b"].state, found["b"].message) == (
        RemoteState.ERROR,
        "The remote qtask: bad circuit",
    )
    assert found["c"].state is RemoteState.RUNNING
    assert found["d"].message == "The remote qtask: Task not found."


async def test_health_reads_the_remote_default_backends_capabilities() -> None:
    body = {
        "default": "aer",
        "backends": [
            {
                "name": "aer",
                "num_qubits": 10000,
                "max_qubits": {"stabilizer": 10000, "statevector": 28},
                "max_shots": 5000,
                "basis_gates": None,
                "coupling_map": None,
                "noise": None,
                "memory": True,
                "seeds": True,
            }
        ],
    }
    remote = backend(httpx.MockTransport(lambda r: httpx.Response(200, json=body)))
    assert await remote.health() == "ok"
    assert remote.capabilities.max_qubits == {"stabilizer": 10000, "statevector": 28}
    assert remote.capabilities.max_shots == 5000
    assert remote.capabilities.kind.value == "remote"
