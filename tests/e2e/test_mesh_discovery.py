"""`qtask coordinator` as a process with peers on loopback (FR-001, FR-002): discovery over
/api/v1/nodes with filters, forged adverts refused, a SIGKILLed peer unavailable at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcoord import CoordinatorProcess
from meshkit import MeshProcess, peer_process

FORGED_ID = "12D3KooWForgedForgedForgedForgedForgedForgedForged1"


def wait_until(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[CoordinatorProcess, list[MeshProcess]]]:
    coordinator = CoordinatorProcess(tmp_path / "coordinator").start()
    peers = []
    try:
        for index in range(3):
            extra = ("--forge", FORGED_ID) if index == 0 else ()
            peers.append(
                peer_process(
                    tmp_path / f"peer{index}.log", "--bootstrap", coordinator.addr, *extra
                ).start()
            )
        yield coordinator, peers
    finally:
        for peer in peers:
            peer.kill()
        coordinator.terminate()


def test_peers_are_discovered_filtered_and_a_killed_one_is_unavailable_at_once(
    mesh: tuple[CoordinatorProcess, list[MeshProcess]],
) -> None:
    coordinator, peers = mesh

    def available() -> set[str]:
        nodes = coordinator.get("/api/v1/nodes", available="true")["nodes"]
        return {node["node_id"] for node in nodes}

    wait_until(lambda: available() == {p.peer_id for p in peers}, timeout=20)
    assert coordinator.get("/api/v1/nodes", gate="ccx")["nodes"] == []
    assert len(coordinator.get("/api/v1/nodes", gate="cx", min_fidelity=0.99)["nodes"]) == 3
    assert FORGED_ID not in {n["node_id"] for n in coordinator.get("/api/v1/nodes")["nodes"]}
    rejected = coordinator.wait_for("advert_rejected", where=lambda e: e["reason"] == "forged")
    assert rejected["node"] == FORGED_ID

    victim = peers[1]
    killed = time.monotonic()
    victim.kill()
    wait_until(lambda: victim.peer_id not in available(), timeout=6.0)  # advert_ttl_s
    noticed = time.monotonic() - killed
    print(f"\nSIGKILLed node unavailable after {noticed * 1000:.0f} ms (TTL 6 s)")
    [entry] = [
        n for n in coordinator.get("/api/v1/nodes")["nodes"] if n["node_id"] == victim.peer_id
    ]
    assert entry["status"] == "unavailable"
    health = coordinator.get("/health")
    assert health["status"] == "ok"
    assert health["nodes"] == {"known": 3, "available": 2}
