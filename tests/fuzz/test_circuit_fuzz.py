"""Property-based fuzzing of circuit ingestion and of the task API with generated OpenQASM.

Invariants: the parser either accepts a circuit (within every limit) or raises a CircuitError
with a message, whatever it is given; over HTTP, a real `qtask serve` answers every program
with 202 or a JSON 4xx, never a 5xx, and every task it accepted ends (completed with counts
summing to the shots, or error with a reason).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qasm_strategies import mutated

from qtask.circuits.ingest import IngestedCircuit, Limits, ingest
from qtask.errors import CircuitError
from qtask_testkit import ServerProcess

PARSER_EXAMPLES = 400
API_EXAMPLES = 150
LIMITS = Limits(
    max_circuit_bytes=64 << 10,
    max_qubits=100,
    max_operations=100_000,
    max_statevector_bytes=16 << 20,  # 20 qubits
)


@given(source=st.one_of(mutated(), st.text(max_size=300)))
@settings(max_examples=PARSER_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_ingest_accepts_within_limits_or_explains(source: str) -> None:
    error: str | None = None
    try:
        circuit = ingest(source, LIMITS)
    except CircuitError as exc:
        error = str(exc)
    if error is not None:
        assert error.strip(), "a refusal must say why"
        return
    assert isinstance(circuit, IngestedCircuit)
    assert 0 < circuit.info.num_qubits <= LIMITS.max_qubits
    assert circuit.info.num_operations <= LIMITS.max_operations


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("circuit-fuzz") / "data",
        env={
            "QTASK_LIMITS__MAX_STATEVECTOR_MB": "16",
            "QTASK_LIMITS__MAX_OPERATIONS": "100000",
            "QTASK_WORKER__TASK_TIMEOUT_S": "60",
        },
    )
    server.start()
    yield server
    server.terminate()


def test_generated_programs_over_http(fuzz_server: ServerProcess) -> None:
    accepted: dict[str, int] = {}
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as client:

        @given(source=mutated(), shots=st.integers(1, 2000))
        @settings(max_examples=API_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def submit(source: str, shots: int) -> None:
            # json.dumps escapes lone surrogates; the server must refuse those bodies itself.
            body = json.dumps({"qc": source, "shots": shots}).encode()
            response = client.post(
                "/tasks", content=body, headers={"Content-Type": "application/json"}
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in (202, 400, 413, 422), response.text
            answer = response.json()
            if response.status_code == 202:
                accepted[answer["task_id"]] = shots
            else:
                assert answer["status"] == "error"
                assert answer["message"]

        submit()
        print(f"answers by status: {dict(sorted(statuses.items()))}")
        assert accepted, "the generator should produce some valid programs"
        deadline = time.monotonic() + 180
        left = list(accepted)
        ended: dict[str, dict[str, object]] = {}
        while left and time.monotonic() < deadline:
            bodies = client.get("/tasks", params={"ids": ",".join(left[:256])}).json()["tasks"]
            for body in bodies:
                if body["status"] != "pending":
                    ended[body["task_id"]] = body
            left = [task_id for task_id in left if task_id not in ended]
            if left:
                time.sleep(0.2)
    assert left == [], f"{len(left)} accepted tasks never ended"
    for task_id, body in ended.items():
        if body["status"] == "completed":
            result = body["result"]
            assert isinstance(result, dict)
            assert sum(result.values()) == accepted[task_id]
        else:
            assert body["status"] == "error"
            assert body["message"]
    outcomes = [body["status"] for body in ended.values()]
    print(
        f"{len(accepted)} accepted: {outcomes.count('completed')} completed, "
        f"{outcomes.count('error')} ended in error"
    )
