"""The `mesh` remote backend's calls to a `qtask coordinator` and its reading of the answers,
on httpx.MockTransport."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest

from qtask.config import LimitsSettings
from qtask.config_backends import MeshBackendSettings
from qtask.domain.remote import RemoteState
from qtask.domain.task import Task, new_task_id
from qtask.errors import RemoteRejectedError, RemoteUnavailableError
from qtask.execution.remote_mesh import MeshRemoteBackend
from qtask_testkit import BELL, BELL_INFO


def backend(handler: httpx.MockTransport, **options: object) -> MeshRemoteBackend:
    settings = MeshBackendSettings(type="mesh", url="http://c.example", **options)  # type: ignore[arg-type]
    return MeshRemoteBackend("mesh", settings, LimitsSettings(), transport=handler)


def task(**changes: object) -> Task:
    made = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=300, backend="mesh")
    return replace(made, **changes)  # type: ignore[arg-type]


async def test_submit_posts_the_circuit_with_the_task_id_as_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"job_id": "j-1", "state": "QUEUED"})

    remote = backend(httpx.MockTransport(answer), min_fidelity=0.9)
    sent = task(seed=7)
    assert await remote.submit(sent) == "j-1"
    [request] = seen
    assert request.url.path == "/api/v1/circuits/submit"
    assert request.headers["Idempotency-Key"] == sent.id
    assert json.loads(request.content) == {
        "qasm": BELL, "shots": 300, "seed": 7, "constraints": {"min_fidelity": 0.9},
    }  # fmt: skip


async def test_a_refused_submission_ends_the_task_with_the_coordinators_message() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"status": "error", "message": "line 3: bad"})

    with pytest.raises(RemoteRejectedError, match="The mesh refused the task: line 3: bad"):
        await backend(httpx.MockTransport(answer)).submit(task())


async def test_statuses_map_job_states_and_leave_unknown_jobs_out() -> None:
    bodies = {
        "a": {"state": "RESERVING"},
        "b": {"state": "EXECUTING"},
        "c": {"state": "COMPLETED", "counts": {"00": 5}},
        "d": {"state": "FAILED", "error": "no available node offers `ccx`"},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[1]
        if job_id not in bodies:
            return httpx.Response(404, json={"status": "error", "message": "No job"})
        return httpx.Response(200, json=bodies[job_id])

    found = await backend(httpx.MockTransport(answer)).statuses(["a", "b", "c", "d", "e"])
    assert {k: v.state for k, v in found.items()} == {
        "a": RemoteState.QUEUED, "b": RemoteState.RUNNING, "c": RemoteState.DONE,
        "d": RemoteState.ERROR,
    }  # fmt: skip
    assert found["c"].counts == {"00": 5}
    assert found["d"].message == "The mesh: no available node offers `ccx`"


async def test_a_coordinator_down_is_unavailable_not_an_error_of_the_task() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    with pytest.raises(RemoteUnavailableError, match="answered 503"):
        await backend(httpx.MockTransport(answer)).statuses(["a"])


async def test_health_takes_the_widest_fragment_of_the_available_healthy_nodes() -> None:
    nodes = [
        {"qubit_range": [1, 8], "degraded": []},
        {"qubit_range": [1, 20], "degraded": ["fidelity 0.5 < 0.8"]},
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.params["available"] == "true"
        return httpx.Response(200, json={"nodes": nodes})

    remote = backend(httpx.MockTransport(answer))
    assert await remote.health() == "ok"
    assert remote.capabilities.max_qubits == {"mesh": 8}
    nodes.clear()
    assert await remote.health() == "the mesh coordinator http://c.example has no available node"


async def test_cancel_deletes_the_job_at_the_coordinator_and_an_ended_job_is_no_error() -> None:
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.url.path.endswith("/ended"):
            return httpx.Response(409, json={"status": "error", "message": "ended"})
        if request.url.path.endswith("/broken"):
            return httpx.Response(400, json={"status": "error", "message": "no"})
        return httpx.Response(200, json={"job_id": "j-1", "state": "FAILED"})

    remote = backend(httpx.MockTransport(answer))
    assert remote.capabilities.cancel
    await remote.cancel("j-1")
    await remote.cancel("ended")
    with pytest.raises(RemoteRejectedError, match="refused to cancel job broken: no"):
        await remote.cancel("broken")
    assert seen == [
        ("DELETE", "/api/v1/jobs/j-1"), ("DELETE", "/api/v1/jobs/ended"),
        ("DELETE", "/api/v1/jobs/broken"),
    ]  # fmt: skip
