"""Federation: one real `qtask serve` (A) runs tasks on another (B) through a `qtask` backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qtask_testkit import BELL, ServerProcess, submit, wait_done


def remote_env(url: str, **options: str) -> dict[str, str]:
    """The environment that gives a `qtask serve` a backend `remote` pointing at `url`."""
    env = {
        "QTASK_BACKENDS__REMOTE__TYPE": "qtask",
        "QTASK_BACKENDS__REMOTE__URL": url,
        "QTASK_BACKENDS__REMOTE__POLL_INTERVAL_S": "0.2",
    }
    env.update({f"QTASK_BACKENDS__REMOTE__{k.upper()}": v for k, v in options.items()})
    return env


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    remote = ServerProcess(tmp_path / "b", workers=1)
    remote.start()
    front = ServerProcess(tmp_path / "a", workers=1, env=remote_env(remote.url))
    try:
        front.start()
        yield front, remote
    finally:
        for server in (front, remote):
            if server.process is not None:
                server.terminate()


def test_bell_on_remote_backend_completes_with_the_remote_counts(
    pair: tuple[ServerProcess, ServerProcess],
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
    pair: tuple[ServerProcess, ServerProcess],
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
