"""Backends in a real `qtask serve`: GET /backends, a noisy device run that equals a direct Aer
run with the same seeds, the 422s of admission, a transpile failure, start-up errors, and stores
written before tasks named a backend (read and run as `aer`)."""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from qtask.adapters.redis_store import RedisTaskStore
from qtask_testkit import ServerProcess, make_task, submit, wait_done
from servers import DistributedDeployment, RedisServer, started_deployment

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY_TASK_ID = "00000000-0000-4000-8000-000000000001"  # in sqlite_before_backends.db
BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
# fake_brisbane cannot run a `while` loop: the transpiler refuses it.
WHILE_LOOP = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\nc[0] = measure q[0];\nwhile (c[0]) {\n  h q[0];\n  c[0] = measure q[0];\n}\n"
    "c[1] = measure q[1];\n"
)


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess | DistributedDeployment]:
    """`qtask serve`, then `qtask api` with workers on Redis, NATS and S3: the backend travels
    through each store and queue."""
    yield from started_deployment(request.param, tmp_path_factory)


@pytest.fixture
def client(serve: ServerProcess | DistributedDeployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve.url, timeout=30) as http:
        yield http


# Three qubits, a non-Clifford gate and two entangling gates: the device's layout and routing
# matter, and the run's noise model (cut to the qubits used) must match the whole device's.
GHZ_T = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\n'
    "h q[0];\ncx q[0], q[1];\nt q[1];\ncx q[1], q[2];\nrx(0.3) q[2];\nc = measure q;\n"
)


@functools.cache  # seeded, so the same for both deployments; a device's model takes seconds
def direct_counts(fake: str, source: str, seed: int, shots: int) -> dict[str, int]:
    """What Aer itself gives: the fake device's simulator (its whole noise model), the circuit
    transpiled and run with the seed."""
    from qiskit import qasm3
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime import fake_provider

    simulator = AerSimulator.from_backend(getattr(fake_provider, fake)())
    manager = generate_preset_pass_manager(
        optimization_level=1, backend=simulator, seed_transpiler=seed
    )
    transpiled = manager.run(qasm3.loads(source))
    result = simulator.run(transpiled, shots=shots, seed_simulator=seed).result()
    return {str(key): int(value) for key, value in result.get_counts().items()}


def test_backends_lists_aer_as_default_and_the_noisy_devices(client: httpx.Client) -> None:
    response = client.get("/backends")
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "aer"
    by_name: dict[str, dict[str, Any]] = {b["name"]: b for b in body["backends"]}
    assert list(by_name) == ["aer", "fake_brisbane", "fake_torino", "fake_fez"]
    assert all(b["health"] == "ok" and b["kind"] == "local" for b in by_name.values())
    brisbane = by_name["fake_brisbane"]
    assert brisbane["num_qubits"] == 127
    assert brisbane["basis_gates"] == ["ecr", "id", "rz", "sx", "x"]
    assert [1, 0] in brisbane["coupling_map"]
    assert brisbane["noise"] == "fake_brisbane"
    assert brisbane["max_shots"] == 100_000
    assert brisbane["max_qubits"] == {"statevector": 28}  # limits.max_statevector_mb 4096
    assert by_name["fake_torino"]["num_qubits"] == 133
    assert by_name["fake_fez"]["num_qubits"] == 156
    assert by_name["aer"]["noise"] is None


def test_bell_on_fake_brisbane_equals_a_direct_aer_run_with_the_same_seeds_and_shows_noise(
    client: httpx.Client,
) -> None:
    seed, shots = 1234, 2000
    task_id = submit(client, BELL, backend="fake_brisbane", seed=seed, shots=shots)
    body = wait_done(client, task_id, timeout=120)
    assert body["status"] == "completed", body
    expected = direct_counts("FakeBrisbane", BELL, seed, shots)
    assert body["result"] == expected
    assert body["result"].get("01", 0) + body["result"].get("10", 0) > 0  # device noise


def test_three_qubit_circuit_on_fake_fez_equals_a_direct_aer_run_with_the_same_seeds(
    client: httpx.Client,
) -> None:
    seed, shots = 99, 1000
    task_id = submit(client, GHZ_T, backend="fake_fez", seed=seed, shots=shots)
    body = wait_done(client, task_id, timeout=120)
    assert body["status"] == "completed", body
    assert body["result"] == direct_counts("FakeFez", GHZ_T, seed, shots)


def test_device_task_with_memory_returns_each_noisy_shot_matching_its_counts(
    client: httpx.Client,
) -> None:
    seeded = submit(client, BELL, backend="fake_brisbane", seed=7, shots=300, memory=True)
    unseeded = submit(client, BELL, backend="fake_brisbane", shots=200, memory=True)
    for task_id, shots in [(seeded, 300), (unseeded, 200)]:
        body = wait_done(client, task_id, timeout=120)
        assert body["status"] == "completed", body
        assert len(body["memory"]) == shots
        assert Counter(body["memory"]) == Counter(body["result"])


# Bell on physical qubits 5 and 90 of a 127-qubit device, as a circuit already transpiled for
# it reads: every qubit declared (over limits.max_qubits and the statevector's 28), two used.
BELL_ON_127 = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[127] q;\nbit[3] c;\n'
    "h q[5];\ncx q[5], q[90];\nbarrier q;\nc[0] = measure q[5];\nc[1] = measure q[90];\n"
)


@pytest.mark.parametrize("backend", ["aer", "fake_brisbane"])
def test_a_bell_declaring_127_qubits_runs_on_the_2_it_uses_with_3_bit_keys(
    client: httpx.Client, backend: str
) -> None:
    task_id = submit(client, BELL_ON_127, backend=backend, seed=3, shots=400)
    body = wait_done(client, task_id, timeout=120)
    assert body["status"] == "completed", body
    counts = body["result"]
    assert sum(counts.values()) == 400
    assert {len(key) for key in counts} == {3}
    assert counts.get("000", 0) + counts.get("011", 0) > 360  # Bell, noisy on the device


def test_same_seed_on_a_device_gives_the_same_counts_twice(client: httpx.Client) -> None:
    first, second = (
        submit(client, BELL, backend="fake_brisbane", seed=5, shots=500) for _ in range(2)
    )
    one, two = wait_done(client, first, 120), wait_done(client, second, 120)
    assert one["status"] == "completed"
    assert one["result"] == two["result"]


def test_circuit_the_device_cannot_transpile_ends_in_error_with_the_reason(
    client: httpx.Client,
) -> None:
    task_id = submit(client, WHILE_LOOP, backend="fake_brisbane", shots=10)
    body = wait_done(client, task_id, timeout=120)
    assert body["status"] == "error"
    assert body["message"].startswith("The circuit cannot be transpiled for fake_brisbane: ")
    assert "while_loop" in body["message"]


def test_submission_without_backend_runs_on_aer_as_today(client: httpx.Client) -> None:
    task_id = submit(client, BELL, seed=3, shots=100)
    body = wait_done(client, task_id, timeout=60)
    assert body["status"] == "completed"
    assert set(body["result"]) <= {"00", "11"}  # ideal: no noise


def test_unknown_backend_is_refused_with_422_naming_the_known_ones(client: httpx.Client) -> None:
    response = client.post("/tasks", json={"qc": BELL, "backend": "ibm_kyiv"})
    assert response.status_code == 422
    assert response.json()["message"] == (
        "Unknown backend 'ibm_kyiv'; this service offers aer, fake_brisbane, fake_torino, fake_fez."
    )


def test_circuit_wider_than_the_device_limit_is_refused_naming_it(client: httpx.Client) -> None:
    body = "".join(f"t q[{i}];\n" for i in range(29))
    wide = f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[29] q;\n{body}'
    response = client.post("/tasks", json={"qc": wide, "backend": "fake_fez"})
    assert response.status_code == 422
    assert response.json()["message"] == (
        "The circuit has 29 qubits; backend fake_fez takes at most 28 for a circuit that is "
        "not Clifford."
    )


def test_shots_over_the_device_limit_are_refused_naming_it(client: httpx.Client) -> None:
    response = client.post("/tasks", json={"qc": BELL, "backend": "fake_torino", "shots": 100_001})
    assert response.status_code == 422
    assert response.json()["message"] == (
        "shots must be between 1 and 100000 on backend fake_torino; got 100001."
    )


# --- start-up errors -------------------------------------------------------------------------


def test_a_device_qiskit_ibm_runtime_lacks_fails_start_up_naming_the_setting(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "QTASK_BACKENDS__MINE__TYPE": "aer_device",
        "QTASK_BACKENDS__MINE__DEVICE": "fake_nowhere",
    }
    done = subprocess.run(
        [sys.executable, "-m", "qtask", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "backends.mine.device = 'fake_nowhere'" in done.stderr
    assert "no such fake device" in done.stderr


# --- stores written before tasks named a backend ---------------------------------------------


def test_sqlite_store_from_before_backends_runs_its_queued_task_on_aer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIXTURES / "sqlite_before_backends.db", data / "qtask.db")
    with sqlite3.connect(data / "qtask.db") as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    assert "backend" not in columns  # really the old layout
    server = ServerProcess(data, workers=1)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            body = wait_done(http, LEGACY_TASK_ID, timeout=60)
    finally:
        server.terminate()
    assert body["status"] == "completed"
    assert sum(body["result"].values()) == 100
    assert set(body["result"]) <= {"00", "11"}
    assert '"backend": "aer"' in server.log()  # the canonical line names the backend it ran on


async def test_redis_hash_from_before_backends_reads_as_aer(redis_server: RedisServer) -> None:
    store = RedisTaskStore(redis_server.url)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        task = make_task()
        await store.create(task)
        # The hash as the version before backends wrote it: every field but `backend`.
        key = f"qtask:task:{task.id}"
        assert await raw.hdel(key, "backend") == 1
        stored = await store.get(task.id)
        started = await store.start(task.id, "w1")
    finally:
        await raw.aclose()
        await store.close()
    assert stored is not None
    assert stored.backend == "aer"
    assert started is not None
    assert started.backend == "aer"
