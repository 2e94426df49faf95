"""Helpers shared by the integration and end-to-end tests: a real `qtask serve` process and
a small HTTP client that submits and polls like a user would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from qtask.domain.task import CircuitInfo, Encoding, Task, TaskOutcome, new_task_id
from qtask.testing import InMemoryTaskStore

if TYPE_CHECKING:  # Qiskit loads only where a test asks for a run item or a service
    from collections.abc import Sequence

    from qtask.application.service import TaskService
    from qtask.circuits.ingest import Limits
    from qtask.execution.items import RunItem

BELL = (
    'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0],q[1]; '
    "c[0] = measure q[0]; c[1] = measure q[1];"
)


BELL_INFO = CircuitInfo(
    encoding=Encoding.QASM3,
    num_qubits=2,
    num_clbits=2,
    num_operations=4,
    clifford=True,
    needs_transpile=False,
    measured=True,
)


def make_task(**changes: Any) -> Task:
    """A queued Bell task (100 shots) with the given fields changed, for store tests."""
    return replace(Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=100), **changes)


def ghz(n: int) -> str:
    """An n-qubit GHZ circuit in OpenQASM 3."""
    lines = ['OPENQASM 3.0; include "stdgates.inc";', f"qubit[{n}] q; bit[{n}] c;", "h q[0];"]
    lines += [f"cx q[{i}], q[{i + 1}];" for i in range(n - 1)]
    lines.append("c = measure q;")
    return "\n".join(lines)


def slow_circuit(qubits: int = 22, layers: int = 40) -> str:
    """A non-Clifford circuit that takes Aer seconds to simulate on this machine."""
    lines = ['OPENQASM 3.0; include "stdgates.inc";', f"qubit[{qubits}] q; bit[{qubits}] c;"]
    for layer in range(layers):
        lines += [f"rx(0.{layer + 1}) q[{i}];" for i in range(qubits)]
        lines += [f"cx q[{i}], q[{i + 1}];" for i in range(0, qubits - 1)]
    lines.append("c = measure q;")
    return "\n".join(lines)


def chain(qubits: int, layers: int) -> str:
    """rx/rz on every qubit, then cx between neighbours: entanglement grows with `layers`."""
    body = []
    for layer in range(layers):
        body += [f"rx(0.3) q[{i}];\nrz(0.7) q[{i}];\n" for i in range(qubits)]
        body += [f"cx q[{i}], q[{i + 1}];\n" for i in range(layer % 2, qubits - 1, 2)]
    return f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[{qubits}] q;\n' + "".join(body)


def run_item(
    task_id: str, source: str, limits: Limits, shots: int = 100, seed: int | None = None
) -> RunItem:
    """What a worker hands Aer for `source`, ingested under `limits` as the API would."""
    from qtask.circuits.ingest import ingest
    from qtask.execution.items import RunItem

    result = ingest(source, limits)
    return RunItem(
        task_id=task_id,
        encoding=result.info.encoding,
        source=source,
        program=result.program,
        shots=shots,
        seed=seed,
        measured=result.info.measured,
        needs_transpile=result.info.needs_transpile,
        num_qubits=result.info.num_qubits,
        clifford=result.info.clifford,
    )


def in_memory_service(store: InMemoryTaskStore, max_pending_per_owner: int = 0) -> TaskService:
    """A TaskService with `store` as its store and its queue, ideal Aer as its backend,
    circuits checked in this process, and long polls woken by the store's end notices."""
    from qtask.application.service import TaskService
    from qtask.application.waiters import Waiters
    from qtask.circuits.ingestor import CircuitIngestor
    from qtask.config import LimitsSettings
    from qtask.execution.catalog import aer_only

    settings = LimitsSettings()
    waiters = Waiters()
    store.listen(waiters.ended, waiters.resync)
    return TaskService(
        store,
        store,
        CircuitIngestor(settings, pool=None),
        settings,
        max_pending_per_owner=max_pending_per_owner,
        waiters=waiters,
        backends=aer_only(settings),
    )


class CountingStore(InMemoryTaskStore):
    """The in-memory store, recording the ids each outcomes() call asks for and, of its
    answer, those not ended."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []
        self.pending: list[list[str]] = []

    async def outcomes(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        self.asked.append(list(task_ids))
        found = await super().outcomes(task_ids)
        self.pending.append([i for i in task_ids if i in found and not found[i].status.terminal])
        return found


# Servers' ports are drawn below the kernel's ephemeral range: a port in it is handed to any
# outgoing connection and to any bind(0), so one that a test frees to restart a server on it
# (the same URL) could be taken meanwhile by some client's socket (seen once in CI).
_LOWEST_PORT = 20000
_ports = random.Random()  # seeded from os.urandom: each test process draws its own


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A TCP port nobody holds right now, below the ephemeral range where it has room."""
    highest = _ephemeral_low() - 1
    for _ in range(200 if highest - _LOWEST_PORT > 1000 else 0):
        port = _ports.randint(_LOWEST_PORT, highest)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens(pid: int, port: int) -> bool:
    """True when process `pid` itself holds a socket listening on TCP `port` (Linux's /proc)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    sockets.add(f"socket:[{fields[9]}]")  # 0A: LISTEN; [9]: the inode
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in sockets:
                    return True
    return False


def wait_listening(
    port: int,
    process: subprocess.Popen[bytes],
    what: str,
    log: Callable[[], str],
    timeout: float = 60.0,
    ready: Callable[[], bool] | None = None,
) -> None:
    """Wait until `process` itself listens on `port` (and `ready()`, when given, says yes). The
    port was free when it was chosen, not when the process binds it: a server that another test
    or benchmark started on it since does not count (the process then fails to bind and exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log()}")
        if listens(process.pid, port) and (ready is None or ready()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready in {timeout} s:\n{log()}")


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    what: str,
    log: Callable[[], str],
    timeout: float = 60.0,
) -> None:
    """Wait until `process` listens on `url`'s port and its /ready answers 200."""
    port = urlsplit(url).port
    assert port is not None, url

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_listening(port, process, what, log, timeout, answers)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's group (it and every process it started) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def terminate_group(process: subprocess.Popen[bytes], name: str, timeout: float) -> int | None:
    """SIGTERM and wait up to `timeout` for the exit code (None if it did not come); then
    SIGKILL whatever is left of the process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"{name} did not exit within {timeout:g} s of SIGTERM")
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)  # reaped, so no ResourceWarning lands on a later test


class ServerProcess:
    """`qtask serve` as a user runs it, in its own process group so it can be killed whole."""

    def __init__(
        self, data_dir: Path, *, workers: int = 2, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until /ready answers 200."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "QTASK_LOG__JSON_OUTPUT": "true", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qtask",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--workers",
                str(self.workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        wait_ready(self.url, self.process, "qtask serve", self.log, timeout)

    def kill_tree(self) -> None:
        """SIGKILL the server and every process it started, at once."""
        assert self.process is not None
        kill_group(self.process)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM the server and wait for it to exit; return its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def group_alive(self) -> list[int]:
        """Pids still alive in the server's process group."""
        assert self.process is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "-g", str(self.process.pid)], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split()]

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def task_count(self) -> int:
        """How many tasks the server's database holds."""
        return db_task_count(self.data_dir)

    def stored_status(self, task_id: str) -> str | None:
        """The task's status as the database holds it (queued/running/...), None when absent."""
        import sqlite3

        conn = sqlite3.connect(self.data_dir / "qtask.db")
        try:
            row = conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
        finally:
            conn.close()
        return None if row is None else str(row[0])


def submit(client: httpx.Client, qc: str, **extra: Any) -> str:
    """Submit a circuit and return its task id (asserting the contract's answer)."""
    response = client.post("/tasks", json={"qc": qc, **extra})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["message"] == "Task submitted successfully."
    return str(body["task_id"])


def wait_done(client: httpx.Client, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll until the task is no longer pending; return the final body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
        if body["status"] != "pending":
            return body
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} still pending after {timeout} s")


def db_task_count(data_dir: Path) -> int:
    """How many tasks the server's database holds (read directly, for no-task-created checks)."""
    import sqlite3

    conn = sqlite3.connect(data_dir / "qtask.db")
    try:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        conn.close()


def run_readme_example(heading: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run the first ```python block after `heading` in README.md against the server at `url`
    (as a reader would paste it) and return what it printed; it must exit 0."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split(heading, 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", example],
        capture_output=True,
        text=True,
        env={**os.environ, "QTASK_URL": url},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def remote_env(url: str, **options: str) -> dict[str, str]:
    """The environment that gives a `qtask serve` a backend `remote` pointing at `url`."""
    env = {
        "QTASK_BACKENDS__REMOTE__TYPE": "qtask",
        "QTASK_BACKENDS__REMOTE__URL": url,
        "QTASK_BACKENDS__REMOTE__POLL_INTERVAL_S": "0.2",
    }
    env.update({f"QTASK_BACKENDS__REMOTE__{k.upper()}": v for k, v in options.items()})
    return env


class OnceQueue:
    """A queue for a Worker in unit tests: hands out the given deliveries once, then nothing."""

    def __init__(self, deliveries: list[Any]) -> None:
        self._pending = list(deliveries)

    async def publish(self, tasks: Any) -> None:
        return None

    async def fetch(self, max_tasks: int, timeout: float) -> list[Any]:
        taken, self._pending = self._pending[:max_tasks], self._pending[max_tasks:]
        if not taken:
            await asyncio.sleep(timeout)
        return taken

    async def close(self) -> None:
        return None
