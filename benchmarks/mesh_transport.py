"""The mesh transport: py-libp2p bare (trio only) against MeshHost's asyncio bridge, between two
processes on loopback; gossip propagation; how fast a SIGKILLed peer is noticed.

    .venv/bin/python benchmarks/mesh_transport.py [-n 1000]

Prints a markdown table. Rows:
- bare, new stream / persistent stream: a trio client and a trio echo server, no qtask code
  (what FACTS.md measured: p50 0.73-0.79 ms persistent, 1.3-1.55 ms new stream).
- MeshHost request: `MeshHost.request` against tests/mesh_peer.py's echo handler: the peer's
  request channel (one long-lived stream) and the asyncio<->trio crossings at both ends (the
  way qtask uses it).
- bridge crossing: an asyncio call into the trio thread and back, no network.
- advert propagation: advert timestamp (set just before publish) to the AdvertInbox callback.
- SIGKILL: the request in flight failing, and on_peer(False), after the kill.
- EXECUTE Bell (1024 shots) on a `qtask node` (fragment in its child process) against the
  same `simulate` in this process: the mesh's per-fragment overhead (NFR: <= 300 ms).
Never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mesh_peer import ECHO_PROTOCOL, HANG_PROTOCOL
from meshkit import mesh_client, node_process, peer_process
from qtask.mesh._libp2p import (
    ConnectionConfig,
    Multiaddr,
    TProtocol,
    info_from_p2p_addr,
    new_host,
)
from qtask.mesh.adverts import AdvertInbox
from qtask.mesh.host import call
from qtask.mesh.ir import circuit_to_ir
from qtask.mesh.noise import bell, simulate
from qtask.mesh.protocol import (
    ADVERT_TOPIC,
    EXECUTE_PROTOCOL,
    Advert,
    ExecuteReply,
    ExecuteRequest,
    NoiseSpec,
)
from qtask.mesh.wire import encode_frame, read_frame

BARE_PROTOCOL = TProtocol("/qtask/bench/echo/1.0.0")
PAYLOAD = b"x" * 200  # about an ExecuteReply of a Bell circuit's counts


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, samples_ms: list[float]) -> str:
    return (
        f"| {name} | {len(samples_ms)} | {pct(samples_ms, 0.5):.2f} | {pct(samples_ms, 0.99):.2f} "
        f"| {statistics.fmean(samples_ms):.2f} |"
    )


# -- bare py-libp2p, both ends trio ---------------------------------------------------------


async def serve_bare() -> None:
    """Echo every frame on its stream until the stream ends (persistent or one-shot)."""
    host = new_host(
        listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")],
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )

    async def echo(stream: object) -> None:
        try:
            while True:
                data = await read_frame(stream)
                await stream.write(encode_frame(data))  # type: ignore[attr-defined]
        except Exception:
            await stream.close()  # type: ignore[attr-defined]

    host.set_stream_handler(BARE_PROTOCOL, echo)
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        print(host.get_addrs()[0], flush=True)
        await trio.sleep_forever()


async def bare_client(addr: str, n: int) -> tuple[list[float], list[float]]:
    host = new_host(
        listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")],
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    info = info_from_p2p_addr(Multiaddr(addr))
    fresh: list[float] = []
    persistent: list[float] = []
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        await host.connect(info)
        for _ in range(n):
            started = time.perf_counter()
            stream = await host.new_stream(info.peer_id, [BARE_PROTOCOL])
            await stream.write(encode_frame(PAYLOAD))
            await read_frame(stream)
            await stream.close()
            fresh.append((time.perf_counter() - started) * 1000)
        stream = await host.new_stream(info.peer_id, [BARE_PROTOCOL])
        for _ in range(n):
            started = time.perf_counter()
            await stream.write(encode_frame(PAYLOAD))
            await read_frame(stream)
            persistent.append((time.perf_counter() - started) * 1000)
        await stream.close()
        await host.close()
    return fresh, persistent


def measure_bare(n: int) -> tuple[list[float], list[float]]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        addr = server.stdout.readline().strip()
        return trio.run(bare_client, addr, n)
    finally:
        server.kill()
        server.wait()


# -- MeshHost, both ends bridged ------------------------------------------------------------


async def measure_host(n: int, log_dir: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"request": [], "crossing": [], "advert": [], "kill_req": []}
    out["kill_gone"] = []
    received: list[tuple[float, Advert]] = []

    async def on_advert(advert: Advert) -> None:
        received.append((time.time(), advert))

    peer = peer_process(log_dir / "peer.log", "--advert-interval", "0.1").start()
    try:
        async with mesh_client(topics={ADVERT_TOPIC: AdvertInbox(on_advert)}) as client:
            await client.connect(peer.addr)
            for _ in range(50):  # warm-up
                await client.request(peer.peer_id, ECHO_PROTOCOL, PAYLOAD, timeout=5)
            for _ in range(n):
                started = time.perf_counter()
                await client.request(peer.peer_id, ECHO_PROTOCOL, PAYLOAD, timeout=5)
                out["request"].append((time.perf_counter() - started) * 1000)

            async def nothing() -> None:
                await trio.lowlevel.checkpoint()

            for _ in range(n):
                started = time.perf_counter()
                await client._call(nothing)
                out["crossing"].append((time.perf_counter() - started) * 1000)
            received.clear()
            await asyncio.sleep(5)
            out["advert"] = [(at - a.timestamp) * 1000 for at, a in received]
    finally:
        peer.terminate()
    for i in range(3):
        peer = peer_process(log_dir / f"kill{i}.log").start()
        gone = asyncio.Event()
        gone_at = [0.0]

        def on_peer(
            peer_id: str,
            up: bool,
            target: str = peer.peer_id,
            gone: asyncio.Event = gone,
            gone_at: list[float] = gone_at,
        ) -> None:
            if peer_id == target and not up:
                gone_at[0] = time.monotonic()
                gone.set()

        try:
            async with mesh_client(on_peer=on_peer) as client:
                await client.connect(peer.addr)
                hung = asyncio.create_task(
                    client.request(peer.peer_id, HANG_PROTOCOL, b"x", timeout=30)
                )
                await asyncio.sleep(0.3)
                killed = time.monotonic()
                peer.kill()
                try:
                    await hung
                except Exception:
                    out["kill_req"].append((time.monotonic() - killed) * 1000)
                await asyncio.wait_for(gone.wait(), 10)
                out["kill_gone"].append((gone_at[0] - killed) * 1000)
        finally:
            peer.terminate()
    return out


async def measure_node(n: int, log_dir: Path) -> dict[str, list[float]]:
    noise = NoiseSpec(depolarizing_1q=0.001, depolarizing_2q=0.01, readout=0.01)
    node = node_process(log_dir / "node", noise=noise.model_dump(), capacity=1).start()
    ir = circuit_to_ir(bell())
    out: dict[str, list[float]] = {"execute": [], "local": [], "node_run": []}
    try:
        async with mesh_client(bootstrap=[node.addr]) as client:
            for i in range(n + 20):
                request = ExecuteRequest(correlation_id=f"b{i}", circuit=ir, shots=1024, seed=i)
                started = time.perf_counter()
                reply = await call(
                    client, node.peer_id, EXECUTE_PROTOCOL, request, ExecuteReply, 30
                )
                if i >= 20:  # warm-up
                    out["execute"].append((time.perf_counter() - started) * 1000)
                    out["node_run"].append(reply.run_s * 1000)
    finally:
        node.terminate()
    for i in range(n):
        started = time.perf_counter()
        simulate(ir, noise, 1024, i)
        out["local"].append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per row")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        trio.run(serve_bare)
        return
    print("bare py-libp2p...", file=sys.stderr)
    fresh, persistent = measure_bare(args.n)
    print("MeshHost...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        host = asyncio.run(measure_host(args.n, Path(tmp)))
        print("qtask node...", file=sys.stderr)
        node = asyncio.run(measure_node(min(args.n, 300), Path(tmp)))
    print(f"\n{args.n} requests of {len(PAYLOAD)} B each, two processes on loopback\n")
    print("| what | n | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    print(row("bare py-libp2p, new stream per request", fresh))
    print(row("bare py-libp2p, one persistent stream", persistent))
    print(row("MeshHost.request (request channel, bridged at both ends)", host["request"]))
    print(row("bridge crossing asyncio -> trio -> asyncio, no I/O", host["crossing"]))
    print(row("advert propagation (publish -> AdvertInbox callback)", host["advert"]))
    print(row("SIGKILLed peer: request in flight fails", host["kill_req"]))
    print(row("SIGKILLed peer: on_peer(False)", host["kill_gone"]))
    print(row("EXECUTE Bell 1024 shots on a qtask node, round trip", node["execute"]))
    print(row("  of which the node's child ran Aer", node["node_run"]))
    print(row("the same simulate() in this process", node["local"]))


if __name__ == "__main__":
    main()
