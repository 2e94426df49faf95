"""The Python client and the command line's client commands against a real `qtask serve`.

Retries are proved where they matter: a proxy that drops the first answer after the server
stored the task (the retry must find that task, not make a second), and a server killed and
restarted while a client waits.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtask.api.auth import key_digest, new_key
from qtask.client import (
    AsyncClient,
    Client,
    ConflictError,
    InvalidCircuitError,
    InvalidRequestError,
    NotFoundError,
    TaskResult,
    UnauthorizedError,
)
from qtask_testkit import BELL, ServerProcess, ghz, run_readme_example, slow_circuit

SYNTAX_ERROR = "OPENQASM 3.0;\nqubit[2] q;\nh q[0]\ncx q[0], q[1];\n"  # ';' missing on line 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `qtask serve` (one worker) for the module."""
    process = ServerProcess(tmp_path_factory.mktemp("client") / "data", workers=1)
    process.start()
    yield process
    process.terminate()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url) as qtask:
        yield qtask


def test_bell_counts_through_submit_and_wait(client: Client) -> None:
    result = client.wait(client.submit(BELL, shots=1000, seed=11), timeout=60)
    assert result.ok
    assert result.counts is not None
    assert set(result.counts) == {"00", "11"}
    assert sum(result.counts.values()) == 1000


def test_a_qiskit_circuit_runs_as_it_is(client: Client) -> None:
    qiskit = pytest.importorskip("qiskit")
    circuit = qiskit.QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.cx(1, 2)
    circuit.rz(3.141592653589793 / 4, 2)  # `pi` in OpenQASM 3; OpenQASM 2 keeps it fast
    circuit.measure_all()
    result = client.wait(client.submit(circuit, shots=200), timeout=60)
    assert result.counts is not None
    assert set(result.counts) == {"000", "111"}


def test_a_batch_gives_one_result_per_circuit_in_order(client: Client) -> None:
    ids = client.submit_many([ghz(2), ghz(3), BELL], shots=100, seed=5)
    results = client.wait(ids, timeout=60)
    assert [r.id for r in results] == ids
    assert [set(r.counts or {}) for r in results] == [{"00", "11"}, {"000", "111"}, {"00", "11"}]
    assert all(sum((r.counts or {}).values()) == 100 for r in results)


def test_a_queued_task_is_cancelled_and_an_ended_one_is_a_conflict(client: Client) -> None:
    busy = client.submit(slow_circuit(qubits=20, layers=20), shots=10)  # holds the one worker
    queued = client.submit(BELL)
    assert client.cancel(queued) == TaskResult(queued, "error", error="Task was cancelled.")
    assert client.wait(queued, timeout=10).error == "Task was cancelled."
    assert client.cancel(queued).error == "Task was cancelled."  # a repeat answers the same
    client.cancel(busy)  # running alone: ends now, its run is stopped
    completed = client.submit(BELL, shots=10)
    client.wait(completed, timeout=60)
    with pytest.raises(ConflictError) as caught:
        client.cancel(completed)
    assert caught.value.message == "The task already ended (completed)."


def test_an_invalid_circuit_says_where(client: Client) -> None:
    with pytest.raises(InvalidCircuitError) as caught:
        client.submit(SYNTAX_ERROR)
    assert (caught.value.line, caught.value.column) == (4, 1)
    assert caught.value.status_code == 400
    with pytest.raises(InvalidCircuitError) as in_batch:
        client.submit_many([BELL, SYNTAX_ERROR])
    assert (in_batch.value.index, in_batch.value.line) == (1, 4)


def test_an_unknown_task_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError):
        client.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFoundError):
        client.wait(["00000000-0000-0000-0000-000000000000", "x"], timeout=5)


def test_a_chosen_backend_runs_the_task_and_an_unknown_one_is_refused(client: Client) -> None:
    # The server lists backends (GET /backends), so the client sends the choice.
    result = client.wait(client.submit(BELL, shots=200, seed=3, backend="aer"), timeout=60)
    assert set(result.counts or {}) <= {"00", "11"}
    with pytest.raises(InvalidRequestError, match="Unknown backend 'nowhere'"):
        client.submit(BELL, backend="nowhere")


async def test_the_async_client_gets_bell_counts(server: ServerProcess) -> None:
    async with AsyncClient(server.url) as qtask:
        result = await qtask.wait(await qtask.submit(BELL, shots=300), timeout=60)
    assert set(result.counts or {}) == {"00", "11"}


class DropFirstAnswer:
    """A TCP proxy to the server that, on its first connection, forwards the request and then
    closes the connection without passing the answer on (kept in `dropped`)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.dropped = b""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            drop = self.connections == 1
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
            threading.Thread(
                target=self._answer, args=(upstream, downstream, drop), daemon=True
            ).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            target.close()

    def _answer(self, upstream: socket.socket, downstream: socket.socket, drop: bool) -> None:
        if not drop:
            self._pump(upstream, downstream)
            return
        upstream.settimeout(30)
        while b"}" not in self.dropped:  # the whole answer, body included: the task is stored
            chunk = upstream.recv(65536)
            if not chunk:
                break
            self.dropped += chunk
        downstream.shutdown(socket.SHUT_RDWR)
        downstream.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def test_a_retry_after_a_lost_answer_returns_the_stored_task(server: ServerProcess) -> None:
    proxy = DropFirstAnswer(server.port)
    before = server.task_count()
    try:
        with Client(f"http://127.0.0.1:{proxy.port}") as qtask:
            task_id = qtask.submit(BELL, shots=50)
            result = qtask.wait(task_id, timeout=60)
    finally:
        proxy.close()
    assert proxy.connections >= 2  # the answer was lost and the call retried
    assert f'"task_id":"{task_id}"'.encode() in proxy.dropped.replace(b" ", b"")
    assert server.task_count() == before + 1
    assert result.ok


def test_wait_outlasts_a_server_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", workers=1)
    server.start()
    try:
        with Client(server.url) as qtask:
            task_id = qtask.submit(BELL, shots=20)
            server.kill_tree()  # the task is stored; the server is gone before the wait starts
            outcome: list[TaskResult | BaseException] = []

            def waiting() -> None:
                try:
                    outcome.append(qtask.wait(task_id, timeout=120))
                except BaseException as exc:  # handed to the test thread
                    outcome.append(exc)

            waiter = threading.Thread(target=waiting)
            waiter.start()
            waiter.join(1.0)  # waiting against a dead server: nothing can answer it yet
            assert outcome == []
            server.start()
            waiter.join(150)
        assert len(outcome) == 1
        assert isinstance(outcome[0], TaskResult), outcome
        assert set(outcome[0].counts or {}) <= {"00", "11"}
        assert sum((outcome[0].counts or {}).values()) == 20
    finally:
        server.terminate()


def test_keys_on_unauthorized_without_a_key_and_served_with_one(tmp_path: Path) -> None:
    key = new_key()
    env = {
        "QTASK_AUTH__ENABLED": "true",
        "QTASK_AUTH__KEYS": json.dumps([{"name": "ada", "sha256": key_digest(key)}]),
    }
    server = ServerProcess(tmp_path / "data", workers=1, env=env)
    server.start()
    try:
        with Client(server.url, api_key="") as anonymous, pytest.raises(UnauthorizedError):
            anonymous.submit(BELL)
        with Client(server.url, api_key=key) as ada:
            assert ada.wait(ada.submit(BELL, shots=10), timeout=60).ok
    finally:
        server.terminate()


# --- The command line ---------------------------------------------------------------------


def qtask_cli(
    server: ServerProcess, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`qtask ARGS` in a subprocess, as a user runs it (not a terminal: no colours)."""
    env = {**os.environ, "QTASK_URL": server.url, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "qtask", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def circuits(tmp_path: Path) -> Path:
    (tmp_path / "batch").mkdir()
    (tmp_path / "bell.qasm").write_text(BELL)
    (tmp_path / "bad.qasm").write_text(SYNTAX_ERROR)
    for n in (2, 3, 4):
        (tmp_path / "batch" / f"ghz{n}.qasm").write_text(ghz(n))
    return tmp_path


def test_cli_submit_wait_json_gives_the_counts(server: ServerProcess, circuits: Path) -> None:
    done = qtask_cli(server, "submit", str(circuits / "bell.qasm"), "--shots", "64", "--wait",
                     "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert set(result["counts"]) == {"00", "11"}
    assert sum(result["counts"].values()) == 64
    status = qtask_cli(server, "status", result["task_id"], "--json")
    assert json.loads(status.stdout)["status"] == "completed"


def test_cli_result_draws_a_histogram(server: ServerProcess, circuits: Path) -> None:
    submitted = qtask_cli(server, "submit", str(circuits / "bell.qasm"), "--json")
    task_id = json.loads(submitted.stdout)[0]["task_id"]
    shown = qtask_cli(server, "result", task_id, "--wait", "--timeout", "60")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any("histogram" in line for line in lines)
    bars = [line for line in lines if line.lstrip("│ ").startswith(("00", "11"))]
    assert len(bars) == 2
    assert all("█" in bar for bar in bars)


def test_cli_submits_a_directory_as_one_batch(server: ServerProcess, circuits: Path) -> None:
    done = qtask_cli(server, "submit", "batch", "--wait", cwd=circuits)
    assert done.returncode == 0, done.stderr
    for n in (2, 3, 4):
        assert f"ghz{n}.qasm" in done.stdout
    assert done.stdout.count("completed") == 3
    as_json = qtask_cli(server, "submit", str(circuits / "batch"), "--json")
    assert [Path(t["file"]).name for t in json.loads(as_json.stdout)] == [
        "ghz2.qasm",
        "ghz3.qasm",
        "ghz4.qasm",
    ]


def test_cli_names_the_file_line_and_column_of_a_bad_circuit(
    server: ServerProcess, circuits: Path
) -> None:
    done = qtask_cli(server, "submit", str(circuits / "bell.qasm"), str(circuits / "bad.qasm"))
    assert done.returncode == 1
    assert "bad.qasm" in done.stderr
    assert "line 4, column 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_cancel_and_unknown_ids(server: ServerProcess, circuits: Path) -> None:
    submitted = qtask_cli(server, "submit", str(circuits / "bell.qasm"), "--wait", "--json")
    task_id = json.loads(submitted.stdout)[0]["task_id"]
    ended = qtask_cli(server, "cancel", task_id)
    assert ended.returncode == 1
    assert "qtask: The task already ended (completed)." in ended.stderr
    unknown = qtask_cli(server, "status", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1
    assert "Task not found." in unknown.stderr


def test_client_list_and_circuit_read_back(client: Client) -> None:
    first = client.submit(BELL, shots=10)
    second = client.submit(ghz(3), shots=10)
    client.wait([first, second], timeout=60)
    page = client.list(limit=2)
    assert [r.id for r in page.tasks] == [second, first]
    assert all(r.ok and r.created_at is not None for r in page.tasks)
    assert page.next_cursor is not None
    assert client.list(status="pending").tasks == []
    assert client.circuit(first) == BELL
    with pytest.raises(NotFoundError):
        client.circuit("00000000-0000-0000-0000-000000000000")


def test_cli_list_as_a_table_and_as_json(server: ServerProcess, circuits: Path) -> None:
    submitted = qtask_cli(server, "submit", str(circuits / "bell.qasm"), "--wait", "--json")
    task_id = json.loads(submitted.stdout)[0]["task_id"]
    as_json = qtask_cli(server, "list", "--status", "completed", "--limit", "1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    listing = json.loads(as_json.stdout)
    [item] = listing["tasks"]
    assert (item["task_id"], item["status"]) == (task_id, "completed")
    assert sum(item["counts"].values()) == 1024
    assert isinstance(item["created_at"], float)
    table = qtask_cli(server, "list", "--limit", "1")
    assert table.returncode == 0, table.stderr
    assert task_id in table.stdout
    assert "completed" in table.stdout
    assert f"qtask list --cursor {listing['next_cursor']}" in table.stdout.replace("\n", "")
    refused = qtask_cli(server, "list", "--status", "queued")
    assert refused.returncode == 2  # not one of the API's names: a usage error


def test_cli_backends_as_a_table_and_as_json(server: ServerProcess) -> None:
    as_json = qtask_cli(server, "backends", "--json")
    assert as_json.returncode == 0, as_json.stderr
    listing = json.loads(as_json.stdout)
    assert listing["default"] == "aer"
    by_name = {b["name"]: b for b in listing["backends"]}
    assert list(by_name) == ["aer", "fake_brisbane", "fake_torino", "fake_fez"]
    assert (by_name["fake_brisbane"]["num_qubits"], by_name["fake_brisbane"]["noise"]) == (
        127,
        "fake_brisbane",
    )
    assert all(b["health"] == "ok" for b in by_name.values())
    table = qtask_cli(server, "backends")
    assert table.returncode == 0, table.stderr
    [header] = [line for line in table.stdout.splitlines() if "┃" in line]
    rows = [line for line in table.stdout.splitlines() if "│" in line]
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == [
        "name", "kind", "qubits", "noise", "health"
    ]  # fmt: skip
    cells = {row.split("│")[1].split()[0]: row.split("│")[2:-1] for row in rows}
    assert [cell.strip() for cell in cells["fake_brisbane"]] == ["local", "127", "fake_brisbane",
                                                                 "ok"]  # fmt: skip
    assert "(default)" in next(row for row in rows if " aer " in row)


def test_cli_submit_on_a_backend_with_memory_in_both_output_modes(
    server: ServerProcess, circuits: Path
) -> None:
    done = qtask_cli(server, "submit", str(circuits / "bell.qasm"), "--backend", "fake_brisbane",
                     "--memory", "--shots", "50", "--seed", "4", "--wait", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert sum(result["counts"].values()) == 50
    assert len(result["memory"]) == 50
    assert Counter(result["memory"]) == result["counts"]
    shown = qtask_cli(server, "result", result["task_id"])
    assert shown.returncode == 0, shown.stderr
    [memory_line] = [line for line in shown.stdout.splitlines() if line.startswith("memory: ")]
    assert memory_line.split()[1:17] == result["memory"][:16]
    assert memory_line.endswith("... (50 shots)")
    plain = qtask_cli(server, "submit", str(circuits / "bell.qasm"), "--wait", "--json")
    assert "memory" not in json.loads(plain.stdout)[0]  # not asked: the output as before
    refused = qtask_cli(server, "submit", str(circuits / "bell.qasm"), "--backend", "nowhere")
    assert refused.returncode == 1
    assert "Unknown backend 'nowhere'" in refused.stderr


def test_the_readme_python_example_runs(server: ServerProcess) -> None:
    done = run_readme_example("## Use it from Python and the command line", server.url)
    first, batch, names, noisy, error = done.stdout.splitlines()
    assert first.startswith("completed {")
    assert sum(ast.literal_eval(first.removeprefix("completed ")).values()) == 1000
    assert batch.count("'00'") == 2
    assert ast.literal_eval(names) == ["aer", "fake_brisbane", "fake_torino", "fake_fez"]
    device_counts = ast.literal_eval(noisy)
    assert sum(device_counts.values()) == 1000
    assert {"01", "10"} <= set(device_counts)  # the device's noise
    assert error.startswith("4 1 Invalid OpenQASM 3: line 4, column 1:")
