"""Aer's method per circuit, in real worker child processes: the pool, and `qtask serve`.

Stabilizer for a 50-qubit GHZ, matrix product state for a 40-qubit low-entanglement circuit
(Aer's automatic method fails it with "Insufficient memory"), statevector at 20 qubits, a batch
that mixes them, a run that outgrows the worker's memory, and the GPU where there is one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from qtask.circuits.ingest import Limits
from qtask.errors import QTaskError
from qtask.execution.items import RunItem, RunOutcome
from qtask.runtime.pool import ChildOutOfMemoryError, ChildPool
from qtask_testkit import ServerProcess, chain, ghz, run_item, submit, wait_done

LIMITS = Limits(
    max_circuit_bytes=512 << 10,
    max_qubits=100,
    max_operations=100_000,
    max_statevector_bytes=4096 << 20,
)


def item(task_id: str, source: str, shots: int = 100) -> RunItem:
    return run_item(task_id, source, LIMITS, shots)


async def aer_pool(max_statevector_mb: int) -> ChildPool:
    pool = ChildPool(
        1,
        "qtask.execution.aer:run_items",
        init_path="qtask.execution.aer:init_process",
        init_args=(1, max_statevector_mb, "auto"),
        preload=["qtask.execution.aer"],
        env={"OMP_WAIT_POLICY": "passive"},
    )
    await pool.start()
    return pool


@pytest.fixture
async def pool() -> AsyncIterator[ChildPool]:
    opened = await aer_pool(4096)
    yield opened
    await opened.close()


def assert_counts(outcome: RunOutcome, shots: int, width: int) -> dict[str, int]:
    assert outcome.error is None, outcome.error
    assert outcome.counts is not None
    assert sum(outcome.counts.values()) == shots
    assert all(len(key) == width and set(key) <= {"0", "1"} for key in outcome.counts)
    return outcome.counts


async def test_clifford_ghz_50_runs_with_the_stabilizer(pool: ChildPool) -> None:
    [outcome] = await pool.call([item("ghz", ghz(50), 200)], timeout=60)
    assert outcome.method == "stabilizer"
    counts = assert_counts(outcome, 200, 50)
    assert set(counts) <= {"0" * 50, "1" * 50}


def transpiled_ghz(width: int) -> str:
    """A GHZ state written with the quarter turns transpilers emit: h as rz(pi/2) sx rz(pi/2),
    then phases rz(-pi/2) and rz(pi) that leave the counts alone."""
    lines = [f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[{width}] q;\nbit[{width}] c;']
    lines.append("rz(pi/2) q[0];\nsx q[0];\nrz(pi/2) q[0];")
    for i in range(width - 1):
        lines.append(f"cx q[{i}], q[{i + 1}];\nrz(-pi/2) q[{i}];\nrz(pi) q[{i + 1}];")
    lines.append("c = measure q;")
    return "\n".join(lines) + "\n"


async def test_transpiled_clifford_circuit_with_rz_quarter_turns_runs_with_the_stabilizer(
    pool: ChildPool,
) -> None:
    # 50 qubits: only the stabilizer method can run it; rz(k pi/2) is Clifford.
    [outcome] = await pool.call([item("quarter-turns", transpiled_ghz(50), 200)], timeout=60)
    assert outcome.method == "stabilizer"
    counts = assert_counts(outcome, 200, 50)
    assert set(counts) == {"0" * 50, "1" * 50}


async def test_40_qubit_low_entanglement_circuit_runs_with_mps(pool: ChildPool) -> None:
    # Its statevector would take 16 TiB; Aer's automatic method answers "Insufficient memory".
    [outcome] = await pool.call([item("mps", chain(40, 3), 256)], timeout=60)
    assert outcome.method == "matrix_product_state"
    assert_counts(outcome, 256, 40)


async def test_mps_circuit_with_gates_mps_lacks_is_transpiled_and_runs(pool: ChildPool) -> None:
    # Aer's MPS method answers "invalid instructions" for crz, cry and cu; statevector has them.
    source = (
        chain(30, 2)
        + "crz(0.2) q[0], q[1];\ncu(0.1, 0.2, 0.3, 0.4) q[1], q[2];\ncry(0.1) q[4], q[5];\n"
    )
    [outcome] = await pool.call([item("mps-crz", source, 64)], timeout=60)
    assert outcome.method == "matrix_product_state"
    assert_counts(outcome, 64, 30)


async def test_20_qubit_non_clifford_circuit_runs_with_the_statevector(pool: ChildPool) -> None:
    [outcome] = await pool.call([item("sv", chain(20, 2), 128)], timeout=60)
    assert outcome.method == "statevector"
    assert_counts(outcome, 128, 20)


async def test_batch_mixing_methods_runs_each_with_its_own_and_keeps_order(
    pool: ChildPool,
) -> None:
    items = [
        item("sv-a", chain(20, 2), 100),
        item("ghz", ghz(50), 100),
        item("mps", chain(40, 3), 100),
        item("sv-b", chain(3, 1), 100),
        item("ghz-other-shots", ghz(30), 50),
    ]
    outcomes = await pool.call(items, timeout=120)
    assert [o.task_id for o in outcomes] == [i.task_id for i in items]
    assert [o.method for o in outcomes] == [
        "statevector",
        "stabilizer",
        "matrix_product_state",
        "statevector",
        "stabilizer",
    ]
    for outcome, width, shots in zip(outcomes, [20, 50, 40, 3, 30], [100] * 4 + [50], strict=True):
        assert_counts(outcome, shots, width)


async def test_mps_run_that_outgrows_the_memory_budget_is_stopped_and_says_so() -> None:
    # 8 MiB of statevector allows a 16 MiB simulation: 40 entangling layers outgrow it fast.
    small = await aer_pool(8)
    try:
        with pytest.raises(ChildOutOfMemoryError) as info:
            await small.call([item("deep", chain(40, 40), 10)], timeout=120)
        assert "the circuit needed more memory than the worker allows" in str(info.value)
        assert small.alive() == 1  # replaced
        [outcome] = await small.call([item("after", ghz(5), 10)], timeout=60)
        assert outcome.counts is not None
    finally:
        await small.close()


def gpu_present() -> bool:
    from qiskit_aer import AerSimulator

    return "GPU" in AerSimulator().available_devices()


@pytest.mark.skipif(
    not gpu_present(), reason="Aer reports no GPU (needs qiskit-aer-gpu and a CUDA device)"
)
async def test_statevector_runs_on_the_gpu_when_aer_reports_one() -> None:
    gpu = ChildPool(
        1,
        "qtask.execution.aer:run_items",
        init_path="qtask.execution.aer:init_process",
        init_args=(1, 4096, "GPU"),  # refuses to start without a GPU
        preload=["qtask.execution.aer"],
    )
    await gpu.start()
    try:
        [outcome] = await gpu.call([item("sv-gpu", chain(24, 4), 256)], timeout=120)
        assert outcome.method == "statevector"
        assert_counts(outcome, 256, 24)
    finally:
        await gpu.close()


@pytest.mark.skipif(gpu_present(), reason="Aer reports a GPU here")
async def test_gpu_device_without_a_gpu_stops_the_worker_from_starting() -> None:
    pool = ChildPool(
        1,
        "qtask.execution.aer:run_items",
        init_path="qtask.execution.aer:init_process",
        init_args=(1, 4096, "GPU"),
        preload=["qtask.execution.aer"],
    )
    try:
        # The child's traceback (on stderr) says "worker.aer_device is GPU but Aer reports
        # only CPU"; the pool reports that its process did not start.
        with pytest.raises(QTaskError, match="a worker process failed to start"):
            await pool.start()
    finally:
        await pool.close()


# --- through `qtask serve` -----------------------------------------------------------------


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("aer") / "data", workers=1)
    server.start()
    try:
        yield server
    finally:
        server.terminate()


def finished_lines(
    server: ServerProcess, task_ids: list[str], timeout: float = 10.0
) -> dict[str, dict[str, object]]:
    """The `task_finished` records of these tasks. The worker logs that line just after it
    stores the result a client can already read, so wait (bounded) until every one is there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = {}
        for line in server.log().splitlines():
            if '"task_finished"' in line:
                record = json.loads(line)
                lines[str(record["task_id"])] = record
        if all(task_id in lines for task_id in task_ids) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_serve_runs_each_method_and_logs_it(serve: ServerProcess) -> None:
    with httpx.Client(base_url=serve.url, timeout=30) as client:
        circuits = {"stabilizer": ghz(50), "matrix_product_state": chain(40, 3)}
        circuits["statevector"] = chain(20, 2)
        ids = {method: submit(client, qc, shots=64) for method, qc in circuits.items()}
        batch = client.post(
            "/tasks/batch", json={"tasks": [{"qc": qc, "shots": 32} for qc in circuits.values()]}
        )
        assert batch.status_code == 202, batch.text
        batch_ids = dict(zip(circuits, batch.json()["task_ids"], strict=True))
        for method, width in [("stabilizer", 50), ("matrix_product_state", 40)]:
            for task_id, shots in [(ids[method], 64), (batch_ids[method], 32)]:
                body = wait_done(client, task_id, timeout=120)
                assert body["status"] == "completed", body
                assert sum(body["result"].values()) == shots
                assert all(len(key) == width for key in body["result"])
        for task_id in (ids["statevector"], batch_ids["statevector"]):
            assert wait_done(client, task_id, timeout=120)["status"] == "completed"
    lines = finished_lines(serve, [*ids.values(), *batch_ids.values()])
    for method in circuits:
        for task_id in (ids[method], batch_ids[method]):
            assert lines[task_id]["method"] == method
            assert lines[task_id]["outcome"] == "completed"


def test_serve_ends_an_mps_task_that_outgrows_memory_in_error_saying_so(
    tmp_path: Path,
) -> None:
    # 8 MiB of statevector: a 16 MiB budget, which 40 entangling layers pass within seconds.
    # Default attempts: a run stopped for its memory is not retried (a rerun would need as much).
    env = {"QTASK_LIMITS__MAX_STATEVECTOR_MB": "8"}
    server = ServerProcess(tmp_path / "data", workers=1, env=env)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            task_id = submit(client, chain(40, 40), shots=10)
            body = wait_done(client, task_id, timeout=120)
            after = wait_done(client, submit(client, ghz(5), shots=10), timeout=60)
    finally:
        server.terminate()
    assert body["status"] == "error"
    assert "the circuit needed more memory than this service allows" in body["message"]
    assert after["status"] == "completed"  # the worker process was replaced
    with sqlite3.connect(tmp_path / "data" / "qtask.db") as db:
        [(attempts,)] = db.execute("SELECT attempts FROM tasks WHERE id = ?", (task_id,))
    assert attempts == 1  # failed at its first run, not after max_attempts
