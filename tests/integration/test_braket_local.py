"""The `braket_local` backend in a real `qtask serve`: Amazon Braket's local simulator in the
worker's child processes, its counts keyed exactly as Aer keys them for the same circuit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from qtask_testkit import ServerProcess, submit, wait_done

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
GHZ = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\n'
    "h q[0];\ncx q[0], q[1];\ncx q[1], q[2];\nc = measure q;\n"
)
# Deterministic, with two registers and bits measured out of order: every key's layout (which
# register leads, which bit is rightmost) must be Aer's.
TWO_REGISTERS = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[4] q;\nbit[3] c;\nbit[2] d;\n'
    "x q[0];\nx q[3];\nsdg q[1];\nrz(0.4) q[2];\n"
    "c[2] = measure q[0];\nc[0] = measure q[1];\nd[1] = measure q[3];\nd[0] = measure q[2];\n"
)
MEASURE_THEN_GATE = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[2] c;\n'
    "h q[0];\nc[0] = measure q[0];\nx q[0];\nc[1] = measure q[0];\n"
)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"QTASK_BACKENDS__BRAKET_LOCAL__TYPE": "braket_local"}
    server = ServerProcess(tmp_path_factory.mktemp("braket") / "data", env=env)
    server.start()
    yield server
    server.terminate()


@pytest.fixture
def client(serve: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve.url, timeout=30) as http:
        yield http


def test_backends_lists_braket_local_as_a_local_statevector_without_seeds(
    client: httpx.Client,
) -> None:
    by_name = {b["name"]: b for b in client.get("/backends").json()["backends"]}
    braket = by_name["braket_local"]
    assert (braket["type"], braket["kind"], braket["health"]) == ("braket_local", "local", "ok")
    assert braket["max_qubits"] == {"statevector": 26}
    assert braket["seeds"] is False


@pytest.mark.parametrize(("source", "keys"), [(BELL, {"00", "11"}), (GHZ, {"000", "111"})])
def test_bell_and_ghz_give_only_correlated_outcomes_about_half_each(
    client: httpx.Client, source: str, keys: set[str]
) -> None:
    body = wait_done(client, submit(client, source, backend="braket_local", shots=1000), 120)
    assert body["status"] == "completed", body
    assert set(body["result"]) == keys
    assert sum(body["result"].values()) == 1000
    assert all(350 < n < 650 for n in body["result"].values())  # 500 +- 4.7 sigma


def test_keys_are_laid_out_exactly_as_aer_lays_them_out(client: httpx.Client) -> None:
    on_braket = submit(client, TWO_REGISTERS, backend="braket_local", shots=50, memory=True)
    on_aer = submit(client, TWO_REGISTERS, backend="aer", shots=50, memory=True)
    braket, aer = wait_done(client, on_braket, 120), wait_done(client, on_aer, 120)
    assert braket["status"] == aer["status"] == "completed", (braket, aer)
    assert braket["result"] == aer["result"] == {"10 100": 50}
    assert braket["memory"] == aer["memory"]
    assert Counter(braket["memory"]) == Counter(braket["result"])


def test_a_gate_after_a_measurement_ends_in_error_saying_why(client: httpx.Client) -> None:
    body = wait_done(client, submit(client, MEASURE_THEN_GATE, backend="braket_local"), 120)
    assert body["status"] == "error"
    assert "Braket measures at the end of a circuit only" in body["message"]


def test_a_circuit_wider_than_the_simulator_is_refused_at_submit(client: httpx.Client) -> None:
    wide = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[27] q;\nt q[0];\n'
    response = client.post("/tasks", json={"qc": wide, "backend": "braket_local"})
    assert response.status_code == 422
    assert "takes at most 26" in response.json()["message"]
