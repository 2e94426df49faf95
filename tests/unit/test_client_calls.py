"""qtask.client without a server: answers come from httpx.MockTransport (no I/O).

Retries, the Idempotency-Key they reuse, Retry-After, the typed errors and what is sent.
The real server is in tests/integration/test_client.py.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

import httpx
import pytest

from qtask.client import (
    AsyncClient,
    Client,
    ConflictError,
    InvalidCircuitError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    ServerUnavailableError,
    TaskResult,
    UnauthorizedError,
    UnsupportedError,
    WaitTimeoutError,
    to_qasm,
)

Handler = Callable[[httpx.Request], httpx.Response]
BELL = "OPENQASM 3.0; qubit[2] q; h q[0]; cx q[0], q[1];"


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's pauses, recorded instead of slept."""
    pauses: list[float] = []
    monkeypatch.setattr("time.sleep", pauses.append)
    return pauses


def client_for(handler: Handler, retry: RetryPolicy | None = None) -> Client:
    """A client whose every request is answered by `handler`."""
    return Client("http://qtask.test", transport=httpx.MockTransport(handler), retry=retry)


def error(code: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(code, json={"status": "error", "message": message}, headers=headers)


def test_a_submission_retried_after_503_and_a_dropped_connection_reuses_its_idempotency_key(
    slept: list[float],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return error(503, "The service cannot take tasks right now; retry shortly.")
        if len(seen) == 2:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(
            202, json={"task_id": "t1", "message": "Task submitted successfully."}
        )

    with client_for(handler) as client:
        assert client.submit(BELL, shots=10, seed=3) == "t1"
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3
    assert len(keys) == 1
    assert json.loads(seen[0].content) == {"qc": BELL, "shots": 10, "seed": 3}
    assert len(slept) == 2


def test_two_submissions_carry_different_idempotency_keys() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        return httpx.Response(202, json={"task_id": f"t{len(keys)}", "message": "ok"})

    with client_for(handler) as client:
        assert [client.submit(BELL), client.submit(BELL)] == ["t1", "t2"]
    assert keys[0] != keys[1]


def test_429_waits_the_retry_after_the_server_asks_for(slept: list[float]) -> None:
    answers = [error(429, "Over the rate.", {"Retry-After": "2"})]

    def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop()
        return httpx.Response(200, json={"status": "pending", "message": "..."})

    with client_for(handler) as client:
        assert client.get("t1") == TaskResult("t1", "pending")
    assert slept == [2.0]


def test_retries_are_bounded_and_end_in_a_typed_error(slept: list[float]) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused")

    with (
        client_for(handler, retry=RetryPolicy(attempts=3)) as client,
        pytest.raises(ServerUnavailableError),
    ):
        client.get("t1")
    assert calls == 3
    assert len(slept) == 2


def test_a_rate_limit_that_persists_is_raised_with_its_retry_after(slept: list[float]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(429, "Over the pending cap.", {"Retry-After": "1"})

    with (
        client_for(handler, retry=RetryPolicy(attempts=2)) as client,
        pytest.raises(RateLimitedError) as caught,
    ):
        client.submit(BELL)
    assert caught.value.retry_after_s == 1.0
    assert slept == [1.0]


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (401, "An API key is required", UnauthorizedError),
        (409, "The task already ended.", ConflictError),
        (422, "Invalid request: 'shots': Input should be a valid integer.", InvalidRequestError),
        (413, "The request body is over the limit of 10 bytes.", InvalidRequestError),
    ],
)
def test_refusals_become_typed_errors_without_retrying(
    code: int, message: str, kind: type[Exception], slept: list[float]
) -> None:
    with client_for(lambda _: error(code, message)) as client, pytest.raises(kind) as caught:
        client.submit(BELL)
    assert not isinstance(caught.value, InvalidCircuitError)
    assert caught.value.message == message  # type: ignore[attr-defined]
    assert slept == []


def test_an_invalid_circuit_names_the_line_and_column() -> None:
    message = "Invalid OpenQASM 3: line 4, column 1: unexpected 'cx' (is a ';' missing before it?)"
    with (
        client_for(lambda _: error(400, message)) as client,
        pytest.raises(InvalidCircuitError) as caught,
    ):
        client.submit(BELL)
    assert (caught.value.line, caught.value.column, caught.value.index) == (4, 1, None)
    assert caught.value.message == message


def test_an_invalid_circuit_in_a_batch_names_its_position() -> None:
    message = "tasks[2]: Invalid OpenQASM 3: line 1, column 9: unexpected end of input"
    with (
        client_for(lambda _: error(400, message)) as client,
        pytest.raises(InvalidCircuitError) as caught,
    ):
        client.submit_many([BELL, BELL, "OPENQASM"])
    assert (caught.value.index, caught.value.line, caught.value.column) == (2, 1, 9)


def test_an_unknown_task_is_not_found() -> None:
    with (
        client_for(lambda _: error(404, "Task not found.")) as client,
        pytest.raises(NotFoundError) as caught,
    ):
        client.get("nope")
    assert caught.value.task_id == "nope"


def test_a_backend_is_refused_while_the_server_has_none() -> None:
    posted: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.append(request)
        return error(404, "Task not found.")  # no GET /backends on this server

    with client_for(handler) as client, pytest.raises(UnsupportedError):
        client.submit(BELL, backend="aer")
    assert posted == []  # nothing sent that the server would run on another backend


def test_a_backend_is_sent_to_a_server_that_lists_backends() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/backends":
            return httpx.Response(200, json={"backends": [{"name": "aer"}]})
        bodies.append(json.loads(request.content))
        return httpx.Response(202, json={"task_id": "t1", "message": "ok"})

    with client_for(handler) as client:
        client.submit(BELL, backend="aer")
    assert bodies == [{"qc": BELL, "backend": "aer"}]


BACKENDS = {
    "default": "aer",
    "backends": [
        {"name": "fake_brisbane", "kind": "local", "default": False, "num_qubits": 127,
         "max_qubits": {"statevector": 28}, "basis_gates": ["ecr", "rz", "sx", "x"],
         "coupling_map": [[0, 1], [1, 2]], "noise": "fake_brisbane", "max_shots": 100000,
         "memory": True, "seeds": True, "cancel": True, "health": "ok"},
        {"name": "aer", "kind": "local", "default": True, "num_qubits": 10000,
         "max_qubits": {"stabilizer": 10000, "statevector": 28}, "basis_gates": None,
         "coupling_map": None, "noise": None, "max_shots": 1000000, "memory": True,
         "seeds": True, "cancel": True, "health": "ok"},
        {"name": "remote_ibm", "kind": "remote", "num_qubits": 127, "health": "unreachable"},
    ],
}  # fmt: skip


def test_backends_are_typed_models_with_the_default_first() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/backends"
        return httpx.Response(200, json=BACKENDS)

    with client_for(handler) as client:
        aer, brisbane, remote = client.backends()
    assert (aer.name, aer.default, aer.num_qubits, aer.basis_gates) == ("aer", True, 10000, None)
    assert aer.max_qubits == {"stabilizer": 10000, "statevector": 28}
    assert brisbane.coupling_map == [(0, 1), (1, 2)]
    assert (brisbane.noise, brisbane.max_shots, brisbane.healthy) == ("fake_brisbane", 100000, True)
    # Fields a server leaves out read as absent, not as an error.
    assert (remote.kind, remote.default, remote.healthy, remote.memory) == (
        "remote",
        False,
        False,
        False,
    )


async def test_async_backends_equal_the_sync_ones() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=BACKENDS)

    transport = httpx.MockTransport(handler)
    async with AsyncClient("http://qtask.test", transport=transport) as client:
        found = await client.backends()
    with client_for(handler) as sync:
        assert found == sync.backends()


def test_backends_of_a_server_without_them_raise_unsupported() -> None:
    with (
        client_for(lambda _: error(404, "Not Found")) as client,
        pytest.raises(UnsupportedError, match="GET /backends answers 404"),
    ):
        client.backends()


def test_the_api_key_and_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_URL", "http://from-env.test:9000/")
    monkeypatch.setenv("QTASK_API_KEY", "k-env")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "completed", "result": {"00": 1}})

    with Client(transport=httpx.MockTransport(handler)) as client:
        assert client.get("t").counts == {"00": 1}
    with Client(api_key="k-arg", transport=httpx.MockTransport(handler)) as client:
        client.get("t")
    assert str(seen[0].url) == "http://from-env.test:9000/tasks/t"
    assert seen[0].headers["authorization"] == "Bearer k-env"
    assert seen[1].headers["authorization"] == "Bearer k-arg"


def test_wait_polls_until_every_task_ended_and_reports_progress(slept: list[float]) -> None:
    polls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        a = {"status": "completed", "result": {"0": 5}}
        b = (
            {"status": "pending", "message": "..."}
            if polls < 3
            else {"status": "error", "message": "Task was cancelled."}
        )
        if request.url.path == "/tasks/b":  # once only b is pending, it is read alone
            return httpx.Response(200, json=b)
        return httpx.Response(200, json={"tasks": [{"task_id": "a", **a}, {"task_id": "b", **b}]})

    progress: list[tuple[int, int]] = []
    with client_for(handler) as client:
        results = client.wait(["a", "b"], progress=lambda d, t: progress.append((d, t)))
    assert results == [
        TaskResult("a", "completed", counts={"0": 5}),
        TaskResult("b", "error", error="Task was cancelled."),
    ]
    assert progress == [(1, 2), (1, 2), (2, 2)]
    assert slept[0] < slept[1]  # backs off between polls


def test_wait_outlives_an_unavailable_server_until_its_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with (
        client_for(handler, retry=RetryPolicy(attempts=1)) as client,
        pytest.raises(WaitTimeoutError) as caught,
    ):
        client.wait("t1", timeout=0.2)
    assert caught.value.pending == ["t1"]


def test_a_qiskit_circuit_is_sent_as_openqasm_2_the_servers_fast_path() -> None:
    qiskit = pytest.importorskip("qiskit")
    circuit = qiskit.QuantumCircuit(2)
    circuit.h(0)
    circuit.rz(3.141592653589793 / 4, 1)
    circuit.measure_all()
    text = to_qasm(circuit)
    assert text.startswith("OPENQASM 2.0;")
    assert qiskit.qasm2.loads(text) == circuit


def test_a_qiskit_circuit_with_control_flow_falls_back_to_openqasm_3() -> None:
    qiskit = pytest.importorskip("qiskit")
    circuit = qiskit.QuantumCircuit(1, 1)
    circuit.h(0)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(0)
    assert to_qasm(circuit).startswith("OPENQASM 3.0;")


async def test_the_async_client_retries_with_the_same_key_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    async def no_sleep(delay: float) -> None:
        pauses.append(delay)

    monkeypatch.setattr("asyncio.sleep", no_sleep)
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:
            raise httpx.ReadTimeout("timed out")
        return httpx.Response(202, json={"task_ids": ["a", "b"], "message": "ok"})

    transport = httpx.MockTransport(handler)
    async with AsyncClient("http://qtask.test", transport=transport) as client:
        assert await client.submit_many([BELL, BELL]) == ["a", "b"]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert len(pauses) == 1


def test_wait_long_polls_and_asks_again_at_once_after_a_poll_that_ran_its_course(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("wait"))
        if len(asked) < 3:
            clock[0] += float(request.url.params["wait"])  # the server held it that long
            return httpx.Response(200, json={"status": "pending", "message": "..."})
        return httpx.Response(200, json={"status": "completed", "result": {"11": 3}})

    with client_for(handler) as client:
        result = client.wait("t1", timeout=100)
    assert result == TaskResult("t1", "completed", counts={"11": 3})
    assert asked == ["25", "25", "25"]
    assert slept == []  # no pause between long polls


def test_wait_falls_back_to_polling_a_server_that_answers_at_once(slept: list[float]) -> None:
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("wait"))  # an older server ignores it
        if len(asked) < 4:
            return httpx.Response(200, json={"status": "pending", "message": "..."})
        return httpx.Response(200, json={"status": "completed", "result": {"0": 1}})

    with client_for(handler) as client:
        assert client.wait("t1").ok
    assert len(slept) == 3
    assert slept == sorted(slept)  # the polling schedule's growing pauses


def test_list_sends_the_filters_and_reads_a_page() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = {"task_id": "t2", "created_at": 12.5, "status": "error", "message": "boom"}
        return httpx.Response(200, json={"tasks": [item], "next_cursor": "abc"})

    with client_for(handler) as client:
        page = client.list(status=["pending", "error"], limit=1, cursor="xyz")
    assert dict(seen[0].url.params) == {"status": "pending,error", "limit": "1", "cursor": "xyz"}
    assert page.tasks == [TaskResult("t2", "error", error="boom", created_at=12.5)]
    assert page.next_cursor == "abc"


def test_circuit_reads_the_text_and_an_unknown_task_is_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tasks/t1/circuit":
            return httpx.Response(200, text=BELL)
        return error(404, "Task not found.")

    with client_for(handler) as client:
        assert client.circuit("t1") == BELL
        with pytest.raises(NotFoundError):
            client.circuit("nope")


async def test_the_async_client_long_polls_lists_and_reads_circuits() -> None:
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        if request.url.path == "/tasks/t1/circuit":
            return httpx.Response(200, text=BELL)
        if request.url.path == "/tasks" and "ids" not in request.url.params:
            return httpx.Response(200, json={"tasks": [], "next_cursor": None})
        body = {"status": "completed", "result": {"0": 1}}
        if request.url.path == "/tasks":
            ids = request.url.params["ids"].split(",")
            return httpx.Response(200, json={"tasks": [{"task_id": i, **body} for i in ids]})
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(handler)
    async with AsyncClient("http://qtask.test", transport=transport) as client:
        assert (await client.wait("t1", timeout=10)).ok
        assert [r.ok for r in await client.wait(["a", "b"])] == [True, True]
        assert (await client.list(status="completed")).next_cursor is None
        assert await client.circuit("t1") == BELL
    assert set(asked[0]) == {"wait"}
    assert 9 < float(asked[0]["wait"]) <= 10  # the time left of the caller's timeout
    assert asked[1] == {"ids": "a,b", "wait": "25"}
    assert asked[2] == {"status": "completed"}


def test_memory_is_sent_only_when_asked_and_read_back() -> None:
    sent: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            sent.append(json.loads(request.content))
            return httpx.Response(202, json={"task_ids": ["a", "b"], "message": "ok"})
        body = {"status": "completed", "result": {"00": 1, "11": 1}, "memory": ["11", "00"]}
        return httpx.Response(200, json=body)

    with client_for(handler) as client:
        client.submit_many([BELL, BELL], shots=2, memory=True)
        client.submit_many([BELL, BELL], shots=2)
        result = client.get("a")
    asked, plain = sent
    assert [item["memory"] for item in asked["tasks"]] == [True, True]  # type: ignore[index]
    assert all("memory" not in item for item in plain["tasks"])  # type: ignore[index]
    assert result.memory == ["11", "00"]
    assert result.counts == {"00": 1, "11": 1}


def test_sync_and_async_clients_offer_the_same_calls_with_the_same_signatures() -> None:
    calls = ["submit", "submit_many", "get", "get_many", "list", "circuit", "cancel", "backends",
             "wait"]  # fmt: skip
    for name in calls:
        sync, awaited = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.signature(sync) == inspect.signature(awaited), name
        assert inspect.iscoroutinefunction(awaited), name
        assert not inspect.iscoroutinefunction(sync), name
        assert sync.__doc__, name
        # What help() shows is the call's result, not the plan behind it.
        assert "Plan" not in str(inspect.signature(sync)), name
