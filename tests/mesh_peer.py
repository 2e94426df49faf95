"""A bare MeshHost in its own process, for transport tests and benchmarks/mesh_transport.py.

`python tests/mesh_peer.py [--bootstrap ADDR] [--forge NODE_ID]`: answers ECHO_PROTOCOL with
the request, never answers HANG_PROTOCOL, advertises itself on the advert topic every 0.5 s
(and, with --forge, an advert that names another node). Logs JSON; meshkit reads its
`mesh_host_started` line for the peer id and addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from qtask import logs
from qtask.mesh.adverts import AdvertPublisher
from qtask.mesh.host import MeshHost
from qtask.mesh.protocol import Advert, Availability, NoiseSpec

ECHO_PROTOCOL = "/qtask/test/echo/1.0.0"
HANG_PROTOCOL = "/qtask/test/hang/1.0.0"


def fake_advert(node_id: str, seq: int, now: float, addrs: tuple[str, ...] = ()) -> Advert:
    """A schema-valid advert of an ideal Aer node (tests build variants of it)."""
    return Advert(
        node_id=node_id, gates=("h", "cx", "measure"), qubit_range=(1, 5), fidelity=1.0,
        fidelity_measured_at=now, noise=NoiseSpec(), availability=Availability.AVAILABLE,
        capacity=1, in_use=0, addrs=addrs, timestamp=now, seq=seq,
    )  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--forge", help="also advertise as this node id")
    parser.add_argument("--advert-interval", type=float, default=0.5)
    args = parser.parse_args()
    logs.configure("INFO", json_output=True)
    host = MeshHost(listen=args.listen, bootstrap=args.bootstrap)

    async def echo(peer: str, data: bytes) -> bytes:
        return data

    async def hang(peer: str, data: bytes) -> bytes:
        await asyncio.Event().wait()
        return b""

    host.handle(ECHO_PROTOCOL, echo)
    host.handle(HANG_PROTOCOL, hang)
    await host.start()
    own = AdvertPublisher(
        host.publish,
        lambda seq, now: fake_advert(host.peer_id, seq, now, host.addrs),
        interval_s=args.advert_interval,
    )
    tasks = [asyncio.create_task(own.run())]
    if args.forge:
        forged = AdvertPublisher(
            host.publish,
            lambda seq, now: fake_advert(args.forge, seq, now),
            interval_s=args.advert_interval,
        )
        tasks.append(asyncio.create_task(forged.run()))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    started = time.monotonic()
    await host.stop()
    print(f"stopped in {time.monotonic() - started:.3f} s", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
