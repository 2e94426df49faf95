"""MeshHost between two real processes: this test's host and tests/mesh_peer.py on loopback."""

from __future__ import annotations

import asyncio
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing

from mesh_peer import ECHO_PROTOCOL, HANG_PROTOCOL
from meshkit import MeshProcess, mesh_client, peer_process, poll
from qtask.errors import MeshProtocolError, PeerTimeoutError, PeerUnreachableError
from qtask.mesh.adverts import AdvertInbox
from qtask.mesh.host import CHANNEL_MAX_BYTES, MeshHost
from qtask.mesh.protocol import ADVERT_TOPIC, MAX_FRAME_BYTES, Advert
from qtask_testkit import free_port

FORGED_ID = "12D3KooWForgedForgedForgedForgedForgedForgedForged1"
LAST_PROTOCOL = "/qtask/test/last/1.0.0"


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[MeshProcess]:
    process = peer_process(tmp_path / "peer.log", "--forge", FORGED_ID).start()
    yield process
    process.terminate()


async def test_request_reply_and_adverts_cross_processes(peer: MeshProcess) -> None:
    adverts: list[Advert] = []

    async def accept(advert: Advert) -> None:
        adverts.append(advert)

    inbox = AdvertInbox(accept)
    with structlog.testing.capture_logs() as logs:
        async with mesh_client(topics={ADVERT_TOPIC: inbox}) as client:
            assert await client.connect(peer.addr) == peer.peer_id
            assert peer.peer_id in client.connected_peers()
            payload = bytes(range(256)) * 1000
            assert await client.request(peer.peer_id, ECHO_PROTOCOL, payload, timeout=5) == payload
            await poll(lambda: len(adverts) >= 2, timeout=20)
            await poll(lambda: any(e["event"] == "advert_rejected" for e in logs), timeout=10)
    assert {a.node_id for a in adverts} == {peer.peer_id}
    assert adverts[0].addrs == peer.addrs
    assert adverts[1].seq > adverts[0].seq
    rejected = [e for e in logs if e["event"] == "advert_rejected"]
    assert {(e["node"], e["signer"], e["reason"]) for e in rejected} == {
        (FORGED_ID, peer.peer_id, "forged")
    }
    assert "is not the signing peer" in rejected[0]["detail"]


async def test_request_past_its_timeout_raises_peer_timeout(peer: MeshProcess) -> None:
    async with mesh_client() as client:
        await client.connect(peer.addr)
        with pytest.raises(PeerTimeoutError, match=r"within 0\.3 s"):
            await client.request(peer.peer_id, HANG_PROTOCOL, b"x", timeout=0.3)
        # The connection survives a timed-out request.
        assert await client.request(peer.peer_id, ECHO_PROTOCOL, b"ok", timeout=5) == b"ok"


@pytest.mark.parametrize("size", [1, CHANNEL_MAX_BYTES + 1], ids=["channel", "own-stream"])
async def test_a_timeout_that_fires_while_the_stream_opens_leaves_the_connection_whole(
    peer: MeshProcess, size: int
) -> None:
    # A few milliseconds end the request mid-negotiation (multistream-select) on one of these
    # connections at least: cancelled there, py-libp2p left half a handshake and the peer
    # closed the connection, so every later request on it failed.
    large = b"y" * (CHANNEL_MAX_BYTES + 1)
    for timeout in (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006, 0.008, 0.012, 0.016):
        async with mesh_client() as client:
            await client.connect(peer.addr)
            with pytest.raises(PeerTimeoutError):
                await client.request(peer.peer_id, HANG_PROTOCOL, b"x" * size, timeout=timeout)
            assert await client.request(peer.peer_id, ECHO_PROTOCOL, b"ok", timeout=5) == b"ok"
            assert await client.request(peer.peer_id, ECHO_PROTOCOL, large, timeout=10) == large


async def test_requests_sharing_a_peers_channel_are_answered_past_a_hung_one(
    peer: MeshProcess,
) -> None:
    async with mesh_client() as client:
        await client.connect(peer.addr)
        hung = asyncio.create_task(client.request(peer.peer_id, HANG_PROTOCOL, b"x", timeout=30))
        replies = await asyncio.gather(*(
            client.request(peer.peer_id, ECHO_PROTOCOL, bytes([i]) * 100, timeout=5)
            for i in range(20)
        ))  # fmt: skip
        # Past the channel's size: a stream of its own, the reply still whole.
        large = bytes(range(256)) * (CHANNEL_MAX_BYTES // 256 + 8)
        assert await client.request(peer.peer_id, ECHO_PROTOCOL, large, timeout=10) == large
        assert not hung.done()
        hung.cancel()
    assert replies == [bytes([i]) * 100 for i in range(20)]


async def test_unknown_protocol_and_oversized_frame_raise_protocol_errors(
    peer: MeshProcess,
) -> None:
    async with mesh_client() as client:
        await client.connect(peer.addr)
        with pytest.raises(MeshProtocolError, match="does not speak /qtask/test/none"):
            await client.request(peer.peer_id, "/qtask/test/none/1.0.0", b"x", timeout=5)
        with pytest.raises(MeshProtocolError, match="over"):
            await client.request(
                peer.peer_id, ECHO_PROTOCOL, b"\0" * (MAX_FRAME_BYTES + 1), timeout=5
            )


async def test_killed_peer_fails_the_request_in_flight_and_is_reported_gone(
    peer: MeshProcess,
) -> None:
    events: list[tuple[str, bool, float]] = []
    async with mesh_client(on_peer=lambda p, up: events.append((p, up, time.monotonic()))) as c:
        await c.connect(peer.addr)
        in_flight = asyncio.create_task(c.request(peer.peer_id, HANG_PROTOCOL, b"x", timeout=30))
        await asyncio.sleep(0.3)  # the request is on the wire; nothing to wait on but time
        killed = time.monotonic()
        peer.kill()
        with pytest.raises(PeerUnreachableError):
            await in_flight
        failed = time.monotonic() - killed
        await poll(lambda: (peer.peer_id, False) in [(p, up) for p, up, _ in events], timeout=10)
        gone = next(t for p, up, t in events if p == peer.peer_id and not up) - killed
        assert peer.peer_id not in c.connected_peers()
        with pytest.raises(PeerUnreachableError):
            await c.request(peer.peer_id, ECHO_PROTOCOL, b"x", timeout=10)
    print(f"\nSIGKILLed peer: request failed after {failed * 1000:.0f} ms, "
          f"disconnect reported after {gone * 1000:.0f} ms")  # fmt: skip


async def test_identity_file_keeps_the_peer_id_and_stop_leaves_no_thread(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    before = set(threading.enumerate())
    ids = []
    for _ in range(2):
        host = MeshHost(listen="/ip4/127.0.0.1/tcp/0", identity_file=key)
        await host.start()
        ids.append(host.peer_id)
        assert all(a.endswith(f"/p2p/{host.peer_id}") for a in host.addrs)
        await host.stop()
        await host.stop()
    assert ids[0] == ids[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # asyncio's executor thread (asyncio_N) belongs to the test's loop, not to the host.
    left = [t.name for t in threading.enumerate() if t not in before]
    assert [name for name in left if not name.startswith("asyncio_")] == []


async def test_bootstrap_peer_restarted_on_its_address_is_rejoined(tmp_path: Path) -> None:
    # A coordinator restarted with its identity on its port: nodes that bootstrap from it
    # come back by themselves (MeshHost redials bootstrap peers while disconnected).
    key, port = tmp_path / "hub.key", free_port()
    listen = f"/ip4/127.0.0.1/tcp/{port}"
    hub = MeshHost(listen=listen, identity_file=key)
    await hub.start()
    process = peer_process(tmp_path / "peer.log", "--bootstrap", hub.addrs[0]).start()
    try:
        await poll(lambda: process.peer_id in hub.connected_peers(), timeout=10)
        await hub.stop()
        again = MeshHost(listen=listen, identity_file=key)
        await again.start()
        try:
            assert again.peer_id == hub.peer_id
            await poll(lambda: process.peer_id in again.connected_peers(), timeout=15)
            assert (
                await again.request(process.peer_id, ECHO_PROTOCOL, b"back", timeout=5) == b"back"
            )
        finally:
            await again.stop()
    finally:
        process.terminate()
    assert process.wait_for("mesh_bootstrap_rejoined", timeout=1)["peer"] == hub.peer_id


@pytest.mark.parametrize("size", [10, CHANNEL_MAX_BYTES + 1], ids=["channel", "own_stream"])
async def test_a_reply_written_just_before_stop_is_read_by_a_slow_peer(size: int) -> None:
    # A draining node answers its last request and stops at once. py-libp2p's yamux drops
    # what it buffered for a stream but its reader had not taken yet when the connection
    # closes, so a peer whose trio thread was busy at that moment lost the reply (the mesh
    # node's SIGTERM-drain test failed so under CPU load). Here the client's trio thread is
    # held for 0.5 s from the moment the handler runs: the server's stop falls in that window.
    server = MeshHost(listen="/ip4/127.0.0.1/tcp/0")
    client = MeshHost(listen="/ip4/127.0.0.1/tcp/0")
    stopping: list[asyncio.Task[None]] = []

    async def answer_then_stop(peer: str, request: bytes) -> bytes:
        # The client's trio loop (private: no public way in) sleeps, as a busy one would.
        client._token.run_sync_soon(time.sleep, 0.5)  # type: ignore[union-attr]
        stopping.append(asyncio.create_task(server.stop()))
        return b"last reply %d" % len(request)

    server.handle(LAST_PROTOCOL, answer_then_stop)
    await server.start()
    await client.start()
    try:
        await client.connect(server.addrs[0])
        reply = await client.request(server.peer_id, LAST_PROTOCOL, b"x" * size, timeout=10)
        assert reply == b"last reply %d" % size
        await stopping[0]
    finally:
        await client.stop()
        await server.stop()
