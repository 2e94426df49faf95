"""The coordinator's HTTP API (FR-009) on in-memory fakes of the host and the database,
through Starlette's TestClient: submit, read, follow, list nodes, errors, health, metrics."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from qtask.adapters.local_rate import TokenBuckets
from qtask.api.auth import Gate, key_digest, new_key
from qtask.circuits.ingest import Limits
from qtask.circuits.ingestor import limits_from
from qtask.config import ApiKey, AuthSettings, LimitsSettings, Settings
from qtask.mesh.api import Coordinator, create_app
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.protocol import (
    Advert,
    Availability,
    CircuitIR,
    ExecuteReply,
    ExecuteRequest,
    Instruction,
    NoiseSpec,
)
from qtask.mesh.registry import Registry, Thresholds
from qtask.mesh.runtime import Runtime
from qtask.mesh.testing import Execute, FakeMesh, FakeNode, InMemoryMeshStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
IR = CircuitIR(
    num_qubits=2,
    num_clbits=2,
    instructions=(
        Instruction(name="h", qubits=(0,)),
        Instruction(name="cx", qubits=(0, 1)),
        Instruction(name="measure", qubits=(0,), clbits=(0,)),
        Instruction(name="measure", qubits=(1,), clbits=(1,)),
    ),
)


def advert(node: str, fidelity: float, gates: tuple[str, ...]) -> Advert:
    now = time.time()
    return Advert(
        node_id=node, gates=gates, qubit_range=(1, 5), fidelity=fidelity,
        fidelity_measured_at=now, noise=NoiseSpec(), availability=Availability.AVAILABLE,
        capacity=2, in_use=0, timestamp=now, seq=1,
    )  # fmt: skip


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(Settings()) as test_client:
        yield test_client


@contextmanager
def client_for(settings: Settings, execute: Execute | None = None) -> Iterator[TestClient]:
    store = InMemoryMeshStore()
    registry = Registry(Thresholds(ttl_s=600))
    mesh = FakeMesh()
    for node, fidelity, gates in (
        ("node-a", 0.99, ("h", "cx", "measure")),
        ("node-b", 0.9, ("h", "cx", "ccx", "measure")),
    ):
        registry.upsert(advert(node, fidelity, gates), time.time())
        mesh.add(FakeNode(node, execute=execute))
    cap = settings.auth.max_pending_tasks if settings.auth.enabled else 0
    runtime = Runtime(store, registry, mesh, CoordinatorSettings(plan_wait_s=0), lambda qasm: IR,
                      max_pending_per_owner=cap)  # fmt: skip
    limits: Limits = limits_from(settings.limits)

    def health() -> dict[str, Any]:
        return {"status": "ok", "nodes": {"known": len(registry)}}

    coordinator = Coordinator(runtime, registry, limits, health, store.job_counts)
    limiter = (
        TokenBuckets(settings.auth.rate_per_s, settings.auth.burst)
        if settings.auth.enabled and settings.auth.rate_per_s > 0
        else None
    )
    app = create_app(settings, coordinator, ready_checks={}, gate=Gate(settings.auth, limiter))
    with TestClient(app) as test_client:
        yield test_client


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if body["state"] in ("COMPLETED", "FAILED") or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_a_submitted_circuit_answers_202_with_a_job_id_then_completes_on_a_node(
    client: TestClient,
) -> None:
    response = client.post("/api/v1/circuits/submit", json={"qasm": BELL, "shots": 50, "seed": 3})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    body = finished(client, job_id)
    assert body["state"] == "COMPLETED"
    assert sum(body["counts"].values()) == 50
    [fragment] = body["fragments"]
    assert fragment["node"] == "node-a"
    assert fragment["status"] == "completed"
    assert fragment["start"] <= fragment["end"]


def test_a_syntax_error_answers_400_with_line_and_column_as_qtask_tasks_does(
    client: TestClient,
) -> None:
    bad = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nhh q[0];\n'
    response = client.post("/api/v1/circuits/submit", json={"qasm": bad})
    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert "line 4" in response.json()["message"]


def test_a_body_that_breaks_the_schema_answers_422_naming_the_field(client: TestClient) -> None:
    response = client.post(
        "/api/v1/circuits/submit", json={"qasm": BELL, "constraints": {"min_fidelity": 2}}
    )
    assert response.status_code == 422
    assert "constraints.min_fidelity" in response.json()["message"]


def test_an_infeasible_constraint_fails_the_job_with_the_reason(client: TestClient) -> None:
    response = client.post(
        "/api/v1/circuits/submit",
        json={"qasm": BELL, "constraints": {"min_fidelity": 0.999}},
    )
    body = finished(client, response.json()["job_id"])
    assert body["state"] == "FAILED"
    assert body["error"].startswith("no available node offers `cx` with fidelity >= 0.999")


def test_an_unknown_job_answers_404_naming_it(client: TestClient) -> None:
    response = client.get("/api/v1/jobs/nope")
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": "No job has the id 'nope'."}


def test_the_websocket_streams_each_state_and_closes_after_the_end(client: TestClient) -> None:
    job_id = client.post("/api/v1/circuits/submit", json={"qasm": BELL}).json()["job_id"]
    states = []
    with client.websocket_connect(f"/api/v1/jobs/{job_id}/ws") as ws:
        while True:
            message = ws.receive_json()
            states.append(message["state"])
            if message["state"] in ("COMPLETED", "FAILED"):
                break
        closing = ws.receive()
    assert states[-1] == "COMPLETED"
    assert closing["code"] == 1000


def test_nodes_are_listed_with_the_fr002_filters(client: TestClient) -> None:
    def ids(query: str) -> list[str]:
        return [n["node_id"] for n in client.get(f"/api/v1/nodes{query}").json()["nodes"]]

    assert ids("") == ["node-a", "node-b"]
    assert ids("?gate=ccx") == ["node-b"]
    assert ids("?min_fidelity=0.95") == ["node-a"]
    assert ids("?available=true&gate=h") == ["node-a", "node-b"]
    assert ids("?available=false") == []


def test_metrics_show_queue_depth_and_success_ratio(client: TestClient) -> None:
    job_id = client.post("/api/v1/circuits/submit", json={"qasm": BELL}).json()["job_id"]
    finished(client, job_id)
    text = client.get("/metrics").text
    assert 'qtask_mesh_jobs{state="COMPLETED"}' in text
    assert "qtask_mesh_job_success_ratio 1.0" in text
    assert 'qtask_mesh_nodes{status="available"} 2.0' in text


def test_health_reports_the_coordinator_and_its_nodes(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["nodes"] == {"known": 2}


def test_a_retried_submission_with_the_same_idempotency_key_gets_the_same_job(
    client: TestClient,
) -> None:
    headers = {"Idempotency-Key": "task-1"}
    first = client.post("/api/v1/circuits/submit", json={"qasm": BELL}, headers=headers)
    second = client.post("/api/v1/circuits/submit", json={"qasm": BELL}, headers=headers)
    assert second.status_code == 202
    assert second.json()["job_id"] == first.json()["job_id"]


def test_with_api_keys_on_a_key_is_required_and_sees_only_its_own_jobs() -> None:
    keys = {"alice": new_key(), "bob": new_key()}
    auth = AuthSettings(
        enabled=True, keys=tuple(ApiKey(name=n, sha256=key_digest(k)) for n, k in keys.items())
    )
    with client_for(Settings(auth=auth)) as http:
        refused = http.post("/api/v1/circuits/submit", json={"qasm": BELL})
        assert refused.status_code == 401
        assert http.get("/api/v1/nodes").status_code == 401
        alice = {"Authorization": f"Bearer {keys['alice']}"}
        job_id = http.post("/api/v1/circuits/submit", json={"qasm": BELL}, headers=alice).json()[
            "job_id"
        ]
        assert http.get(f"/api/v1/jobs/{job_id}", headers=alice).status_code == 200
        bob = {"X-API-Key": keys["bob"]}
        assert http.get(f"/api/v1/jobs/{job_id}", headers=bob).status_code == 404


def test_a_body_over_the_size_limit_answers_413_before_any_parse() -> None:
    with client_for(Settings(limits=LimitsSettings(max_body_bytes=1024))) as http:
        response = http.post("/api/v1/circuits/submit", json={"qasm": BELL + "//" + "x" * 2000})
    assert response.status_code == 413
    assert response.json()["message"] == "The request body is over the limit of 1024 bytes."


def test_over_the_keys_rate_the_api_answers_429_with_retry_after() -> None:
    key = new_key()
    auth = AuthSettings(
        enabled=True, keys=(ApiKey(name="k", sha256=key_digest(key)),), rate_per_s=0.1, burst=1
    )
    with client_for(Settings(auth=auth)) as http:
        headers = {"X-API-Key": key}
        assert http.get("/api/v1/nodes", headers=headers).status_code == 200
        limited = http.get("/api/v1/nodes", headers=headers)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1


async def hang(request: ExecuteRequest) -> ExecuteReply:
    await asyncio.sleep(3600)
    raise AssertionError("never answers")


def test_delete_cancels_an_executing_job_once_and_an_ended_one_answers_409() -> None:
    keys = {"alice": new_key(), "bob": new_key()}
    auth = AuthSettings(
        enabled=True, keys=tuple(ApiKey(name=n, sha256=key_digest(k)) for n, k in keys.items())
    )
    alice, bob = {"X-API-Key": keys["alice"]}, {"X-API-Key": keys["bob"]}
    with client_for(Settings(auth=auth), execute=hang) as http:
        job_id = http.post("/api/v1/circuits/submit", json={"qasm": BELL}, headers=alice).json()[
            "job_id"
        ]
        deadline = time.monotonic() + 10
        while http.get(f"/api/v1/jobs/{job_id}", headers=alice).json()["state"] != "EXECUTING":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert http.delete(f"/api/v1/jobs/{job_id}", headers=bob).status_code == 404
        cancelled = http.delete(f"/api/v1/jobs/{job_id}", headers=alice)
        again = http.delete(f"/api/v1/jobs/{job_id}", headers=alice)
        read = http.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
    assert cancelled.status_code == again.status_code == 200
    assert cancelled.json()["state"] == read["state"] == "FAILED"
    assert read["error"] == "cancelled"
    assert [f["status"] for f in read["fragments"]] == ["failed"]


def test_delete_of_a_completed_job_answers_409_and_of_an_unknown_one_404(
    client: TestClient,
) -> None:
    job_id = client.post("/api/v1/circuits/submit", json={"qasm": BELL}).json()["job_id"]
    assert finished(client, job_id)["state"] == "COMPLETED"
    conflict = client.delete(f"/api/v1/jobs/{job_id}")
    assert conflict.status_code == 409
    assert conflict.json()["message"] == "The job already ended (COMPLETED)."
    assert client.delete("/api/v1/jobs/nope").status_code == 404


def test_a_key_at_its_cap_of_pending_jobs_gets_429_with_qtasks_message_until_one_ends() -> None:
    keys = {"alice": new_key(), "bob": new_key()}
    auth = AuthSettings(
        enabled=True,
        keys=tuple(ApiKey(name=n, sha256=key_digest(k)) for n, k in keys.items()),
        max_pending_tasks=1,
    )
    alice, bob = {"X-API-Key": keys["alice"]}, {"X-API-Key": keys["bob"]}
    submit = {"qasm": BELL}
    with client_for(Settings(auth=auth), execute=hang) as http:
        first = http.post("/api/v1/circuits/submit", json=submit, headers=alice)
        assert first.status_code == 202
        refused = http.post("/api/v1/circuits/submit", json=submit, headers=alice)
        other_key = http.post("/api/v1/circuits/submit", json=submit, headers=bob)
        http.delete(f"/api/v1/jobs/{first.json()['job_id']}", headers=alice)
        after_end = http.post("/api/v1/circuits/submit", json=submit, headers=alice)
    assert refused.status_code == 429
    assert refused.json() == {
        "status": "error",
        "message": "Too many pending tasks: key 'alice' has 1 queued or running, and may have "
        "at most 1; retry when some have finished.",
    }
    assert int(refused.headers["Retry-After"]) >= 1
    assert other_key.status_code == after_end.status_code == 202
