"""Federation: one real `qtask serve` (A) runs tasks on another (B) through a `qtask` backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qtask_testkit import BELL, ServerProcess, slow_circuit, submit, wait_done
from servers import Front, federated_pair


@pytest.fixture(params=["embedded", "distributed"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Front, ServerProcess]]:
    """B: `qtask serve`; A: `qtask serve`, or api + workers + `qtask poller` on Redis, NATS and
    S3 (where the result and the pending job record go through the bucket)."""
    yield from federated_pair(request.param, tmp_path, tmp_path_factory)


def test_bell_on_remote_backend_completes_with_the_remote_counts(
    pair: tuple[Front, ServerProcess],
) -> None:
    front, remote = pair
    with (
        httpx.Client(base_url=front.url, timeout=30) as a,
        httpx.Client(base_url=remote.url, timeout=30) as b,
    ):
        via_a = submit(a, BELL, shots=500, seed=11, backend="remote")
        direct = submit(b, BELL, shots=500, seed=11)
        body = wait_done(a, via_a, timeout=60)
        assert body["status"] == "completed", body
        assert body == wait_done(b, direct, timeout=60)
        assert sum(body["result"].values()) == 500
        # B ran it once, under A's task id as its idempotency key: two tasks on B in all.
        assert remote.task_count() == 2


def test_get_backends_lists_the_remote_with_its_capabilities_and_health(
    pair: tuple[Front, ServerProcess],
) -> None:
    front, remote = pair
    listed = httpx.get(f"{front.url}/backends", timeout=30).json()
    entry = next(b for b in listed["backends"] if b["name"] == "remote")
    own = httpx.get(f"{remote.url}/backends", timeout=30).json()
    aer = next(b for b in own["backends"] if b["name"] == own["default"])
    assert entry["kind"] == "remote"
    assert entry["type"] == "qtask"
    assert entry["health"] == "ok"
    assert entry["max_qubits"] == aer["max_qubits"]
    assert entry["max_shots"] == aer["max_shots"]
    remote.kill_tree()
    down = httpx.get(f"{front.url}/backends", timeout=30).json()
    health = next(b for b in down["backends"] if b["name"] == "remote")["health"]
    assert "cannot be reached" in health


def test_delete_of_a_remote_task_cancels_it_at_the_remote_too(
    pair: tuple[Front, ServerProcess],
) -> None:
    front, remote = pair
    with (
        httpx.Client(base_url=front.url, timeout=30) as a,
        httpx.Client(base_url=remote.url, timeout=30) as b,
    ):
        task_id = submit(a, slow_circuit(20, 20), shots=10, backend="remote")
        deadline = time.monotonic() + 60
        while not (listed := b.get("/tasks").json()["tasks"]):
            assert time.monotonic() < deadline, "never submitted to B"
            time.sleep(0.05)
        [on_b] = listed
        cancelled = a.delete(f"/tasks/{task_id}")
        assert cancelled.json() == {"status": "error", "message": "Task was cancelled."}
        body = wait_done(b, on_b["task_id"], timeout=60)
        assert body == {"status": "error", "message": "Task was cancelled."}
