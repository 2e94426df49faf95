"""Per-shot results (`"memory": true`) through both deployments (`qtask serve`: kept in SQLite;
distributed: kept in the S3 result object, not in Redis): Aer's shots come back in the
completed body, match the counts, and tasks that do not ask keep today's body."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import redis

from qtask_testkit import BELL, ServerProcess
from servers import DistributedDeployment, started_deployment

Deployment = ServerProcess | DistributedDeployment

# Two classical registers: Qiskit spaces them in keys ("c1 c0"), and memory must match.
TWO_REGISTERS = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[1] a;\nbit[2] b;\n'
    "x q[0];\nh q[1];\ncx q[1], q[2];\na[0] = measure q[0];\nb[0] = measure q[1];\n"
    "b[1] = measure q[2];\n"
)


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    yield from started_deployment(request.param, tmp_path_factory)


def _done(http: httpx.Client, task_id: str) -> dict[str, object]:
    body: dict[str, object] = http.get(f"/tasks/{task_id}", params={"wait": 30}).json()
    assert body["status"] == "completed", body
    return body


def test_memory_matches_counts_shot_for_shot(server: Deployment) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        task_id = http.post("/tasks", json={"qc": BELL, "shots": 200, "memory": True}).json()[
            "task_id"
        ]
        body = _done(http, task_id)
    memory = body["memory"]
    assert isinstance(memory, list)
    assert len(memory) == 200
    assert dict(Counter(memory)) == body["result"]
    assert set(memory) == {"00", "11"}


def test_a_batch_mixing_memory_and_counts(server: Deployment) -> None:
    items = [
        {"qc": BELL, "shots": 64, "memory": True},
        {"qc": BELL, "shots": 64},
        {"qc": TWO_REGISTERS, "shots": 64, "memory": True, "seed": 3},
    ]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        ids = http.post("/tasks/batch", json={"tasks": items}).json()["task_ids"]
        asked, plain, registers = (_done(http, task_id) for task_id in ids)
        raw = http.get(f"/tasks/{ids[1]}").content
    assert dict(Counter(asked["memory"])) == asked["result"]  # type: ignore[arg-type]
    assert set(plain) == {"status", "result"}
    assert raw.startswith(b'{"status":"completed","result":{')
    # Register b (q2 q1: 00 or 11), a space, register a (q0 = 1).
    assert set(registers["memory"]) <= {"00 1", "11 1"}  # type: ignore[arg-type]
    assert dict(Counter(registers["memory"])) == registers["result"]  # type: ignore[arg-type]


def test_memory_over_the_limit_is_refused_at_submit(server: Deployment) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        response = http.post("/tasks", json={"qc": BELL, "shots": 600_000, "memory": True})
    assert response.status_code == 422
    assert "limits.max_memory_bits" in response.json()["message"]


@pytest.mark.parametrize("server", ["distributed"], indirect=True)
def test_distributed_memory_lives_in_the_result_object_not_redis(server: Deployment) -> None:
    assert isinstance(server, DistributedDeployment)

    with httpx.Client(base_url=server.url, timeout=60) as http:
        task_id = http.post("/tasks", json={"qc": BELL, "shots": 50, "memory": True}).json()[
            "task_id"
        ]
        body = _done(http, task_id)
    assert len(body["memory"]) == 50  # type: ignore[arg-type]
    record = redis.Redis.from_url(server.redis.url).hgetall(f"qtask:task:{task_id}")
    assert record[b"memory"] == b"1"
    assert b"memory_data" not in record
