"""Schema-driven fuzzing of the HTTP API (schemathesis, from the service's own OpenAPI spec).

A real `qtask serve` answers every generated request. Invariants: never a 5xx, every answer
conforms to the documented status codes, content type and body schema, and every task the
fuzzer got accepted reaches a terminal state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from qtask_testkit import ServerProcess

FUZZ_EXAMPLES = 60  # per operation; bounded so CI stays quick
# What the fuzz cases leave for test_every_accepted_task_ends, in this process: a file's tests
# run in one pytest-xdist worker, in order (scripts/test passes --dist=loadfile).
ACCEPTED: list[str] = []
FUZZED: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data")
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


OPERATIONS = [
    ("POST", "/tasks"),
    ("POST", "/tasks/batch"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{task_id}"),
    ("GET", "/tasks/{task_id}/circuit"),
    ("GET", "/tasks/{task_id}/events"),
    ("DELETE", "/tasks/{task_id}"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/backends"),
]


def test_the_spec_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Driven through Hypothesis directly: schemathesis's own pytest plugin does not load under
# pytest 9 ("'Function' object has no attribute '_nodeid'").
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(timeout=30)
        assert response.status_code < 500, response.text
        # A schema cannot say what a valid circuit is, so a schema-valid body with a bad
        # circuit is rightly refused (4xx): that one check does not apply.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        if response.status_code == 202:
            body = response.json()
            ACCEPTED.extend(body.get("task_ids") or [body["task_id"]])

    check()
    FUZZED.add((method, path))


def test_every_accepted_task_ends(fuzz_server: ServerProcess) -> None:
    submitting = {("POST", "/tasks"), ("POST", "/tasks/batch")}
    if not submitting <= FUZZED:  # e.g. `-k` chose this test alone: nothing to check
        pytest.skip("the submitting fuzz cases did not run in this process")
    deadline = time.monotonic() + 120
    left = [task_id for task_id in ACCEPTED if task_id]
    print(f"{len(left)} tasks accepted by the fuzzer")
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as client:
        while left and time.monotonic() < deadline:
            still = []
            for start in range(0, len(left), 256):
                chunk = left[start : start + 256]
                bodies = client.get("/tasks", params={"ids": ",".join(chunk)}).json()["tasks"]
                still += [b["task_id"] for b in bodies if b["status"] == "pending"]
            left = still
            if left:
                time.sleep(0.2)
    assert left == [], f"{len(left)} accepted tasks never ended"
