"""`MeshHost`: a py-libp2p host in its own thread under `trio.run`, used from asyncio.

qtask is asyncio (uvicorn, the stores, live.py); py-libp2p is trio. The host runs one
`trio.run` in a daemon thread and every call crosses between the loops without a thread pool:
an asyncio call schedules a task into the trio nursery (`TrioToken.run_sync_soon`) and the task
hands its result back with `loop.call_soon_threadsafe`; a request arriving on a stream, or a
gossip message, is handed to the asyncio loop the same way, so handlers (and any CPU work they
start) never run on the trio loop, which only moves bytes.

Bridge or one `trio.run` with Hypercorn (#12 asks which): the bridge. Measured between two
processes on loopback (benchmarks/mesh_transport.py, 500 requests of 200 B, 2 shared cores):
bare py-libp2p on a new stream p50 1.75 ms / p99 3.7 ms; `MeshHost.request` (a new stream,
crossing the bridge at both ends) p50 2.31 ms / p99 4.8 ms, so the bridge costs ~0.55 ms per
request (one crossing asyncio -> trio -> asyncio alone is 0.08 ms). Against the coordinator's
300 ms per-fragment budget (NFR) that is nothing, and it keeps uvicorn, the asyncio stores and
every asyncio test helper as they are, which Hypercorn's trio worker would not.

Transport details that matter (measured, ../shared/FACTS.md):
- `ConnectionConfig(max_connections_per_peer=1)`: otherwise every dial waits out a 250 ms window.
- Pubsub and GossipSub start before any connection (bootstrap peers are dialled after them):
  started later, no mesh forms and nothing is delivered.
- GossipSub counts messages per forwarding peer and topic and silently drops those over
  `max_messages_per_topic_per_second` (default 10/s): a coordinator that forwards ten nodes'
  adverts, change adverts and link reports is over that at once. `gossip_rate` sets it.
- A subscription queue holds 32 messages; each topic is drained by its own trio task that does
  nothing but hand the message to asyncio, so the queue stays empty.
- A stream error arrives as a bare reset with no message: application errors travel in replies
  (protocol.py); here every transport failure becomes a `MeshPeerError` subclass.
- The publisher receives its own gossip messages; handlers get them too (signer == peer_id).
- A stream open cancelled mid-negotiation (multistream-select) leaves half a handshake on the
  connection, and the remote end closes the whole connection: a request whose 1 ms timeout
  fired while its peer's channel opened broke every later request to that peer. Streams are
  therefore opened in the host's own nursery, out of the caller's cancel scope (`_stream`,
  `_channel`); a caller that stops waiting gets its timeout, and the stream is closed (or, a
  channel, kept for the next request).

Framing, the key file and the mapping of transport exceptions live in wire.py; libp2p's names
come from _libp2p.py (imported without its import-time DeprecationWarning). Requests up to
CHANNEL_MAX_BYTES travel on one long-lived channel stream per peer (CHANNEL_PROTOCOL: request
id, protocol id, request; the replies in any order, by id); larger ones, and every request to
a peer that does not speak the channel, get one stream each (one request, one reply).

Nothing here knows adverts, reservations or circuits: see adverts.py and node.py.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio
from pydantic import BaseModel, ValidationError

from qtask.errors import MeshPeerError, MeshProtocolError, PeerTimeoutError, PeerUnreachableError
from qtask.logs import get_logger
from qtask.mesh._libp2p import (
    GOSSIPSUB_PROTOCOL_ID,
    ID,
    ConnectionConfig,
    GossipSub,
    INotifee,
    Multiaddr,
    MultiselectClientError,
    Pubsub,
    TProtocol,
    background_trio_service,
    info_from_p2p_addr,
    new_host,
)
from qtask.mesh.protocol import MAX_FRAME_BYTES
from qtask.mesh.wire import MappedErrors, encode_frame, load_identity, read_frame

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

GossipHandler = Callable[[str, bytes], Awaitable[None]]
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]
PeerHandler = Callable[[str, bool], None]

log = get_logger("mesh.host")

# Messages per second that GossipSub accepts from one forwarding peer on one topic. Ten nodes
# advertising every 2 s plus an advert per change (two per fragment run) and a coordinator's
# link reports (one per node per ping interval) are tens per second through one hub; 500 leaves
# headroom for 10-node bursts while a runaway peer is still cut off.
DEFAULT_GOSSIP_RATE = 500.0
# Mesh degree for a 3-10 node loopback mesh: every peer in one mesh; heartbeat each second so
# a joining peer is grafted at once (GossipSub's default heartbeat is 120 s).
GOSSIP_DEGREE = (6, 4, 12)
GOSSIP_HEARTBEAT_S = 1
# Dial and stream-open budget when the caller gives none: loopback dials take ~7 ms, a dead
# address fails in ~0.7 s.
DEFAULT_DIAL_TIMEOUT_S = 5.0
# Bootstrap peers are dialled again this often while not connected (a restarted coordinator
# is rejoined within this; a failed dial to a dead address costs ~0.7 s of one trio task).
DEFAULT_REDIAL_S = 2.0
# How long a peer may take to send its request frame on a stream it opened.
SERVE_READ_TIMEOUT_S = 30.0
# Start-up and shutdown bounds of the libp2p thread.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# How long stop() waits for replies whose handler has returned but which are not written yet
# (a draining node's last fragment ends, the node stops, the reply must still go out).
REPLY_FLUSH_S = 2.0
# Gossip messages waiting for their asyncio handler, per topic, before the oldest are dropped.
GOSSIP_BACKLOG = 10_000
# The request channel: one long-lived stream per peer carrying every request up to
# CHANNEL_MAX_BYTES (larger ones take a stream of their own, so a state transfer never holds
# up a small request). A new stream costs a yamux open and two multistream-select round trips
# (~4-6 ms on the shared 2 cores, the largest part of a RESERVE's round trip); the channel
# pays them once per peer. A peer that does not speak it is asked on new streams.
CHANNEL_PROTOCOL = "/qtask/mesh/channel/1.0.0"
CHANNEL_MAX_BYTES = 256 * 1024
# A request frame on the channel: request id, protocol id length, protocol id, then the
# request; a reply frame: request id, status (below), then the reply or an error message.
_REQUEST_HEAD = struct.Struct(">IH")
_REPLY_HEAD = struct.Struct(">IB")
_OK, _UNKNOWN_PROTOCOL, _FAILED = 0, 1, 2
# A frame on the channel may carry a full-size request plus its header.
_CHANNEL_FRAME_LIMIT = MAX_FRAME_BYTES + 1024
# How long one frame's write may take before its channel is given up (the write is shielded
# from the caller's timeout: a frame cut in half would break every later one).
_CHANNEL_WRITE_S = 10.0


class MeshHost:
    """A libp2p host (Noise, Yamux, GossipSub) for asyncio callers; see the module docstring.

    Register topics, protocols and peer callbacks before `start()`; all handlers run on the
    caller's asyncio loop.
    """

    def __init__(
        self,
        *,
        listen: str,
        bootstrap: Sequence[str] = (),
        identity_file: Path | None = None,
        gossip_rate: float = DEFAULT_GOSSIP_RATE,
        dial_timeout: float = DEFAULT_DIAL_TIMEOUT_S,
        redial_s: float = DEFAULT_REDIAL_S,
    ) -> None:
        self._listen = listen
        self._bootstrap = tuple(bootstrap)
        self._identity_file = identity_file
        self._gossip_rate = gossip_rate
        self._dial_timeout = dial_timeout
        self._redial_s = redial_s
        self._topics: dict[str, list[GossipHandler]] = {}
        self._protocols: dict[str, RequestHandler] = {}
        self._peer_handlers: list[PeerHandler] = []
        self._peers: set[str] = set()
        self.peer_id = ""
        self.addrs: tuple[str, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._host: Any = None
        self._pubsub: Any = None
        self._channels: dict[str, _Channel] = {}
        self._channel_openings: dict[str, _Opening] = {}
        self._no_channel: set[str] = set()
        self._queues: dict[str, asyncio.Queue[tuple[str, bytes]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopped = False
        # Inbound requests being answered (trio side), for stop() to let their replies out.
        self._answering = 0
        self._answering_lock = threading.Lock()
        # Channels peers opened to this host (trio side), for stop() to end them in order.
        self._served: set[Any] = set()
        self._served_ended: trio.Event | None = None

    # -- registration (before start) ----------------------------------------------------------

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        """Call `handler(signer peer id, data)` for each message on `topic`, in arrival order."""
        self._before_start()
        self._topics.setdefault(topic, []).append(handler)

    def handle(self, protocol_id: str, handler: RequestHandler) -> None:
        """Answer streams of `protocol_id`: `handler(peer id, request) -> reply`."""
        self._before_start()
        self._protocols[protocol_id] = handler

    def on_peer(self, handler: PeerHandler) -> None:
        """Call `handler(peer id, True)` when a peer connects and `(peer id, False)` when its
        last connection closes (~0.2 s after a SIGKILL on loopback)."""
        self._peer_handlers.append(handler)

    def _before_start(self) -> None:
        if self._started:
            raise RuntimeError("register topics and protocols before MeshHost.start()")

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the libp2p thread, listen, subscribe, then dial the bootstrap peers."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        key_pair = load_identity(self._identity_file)
        ready: asyncio.Future[None] = self._loop.create_future()
        for topic in self._topics:
            self._queues[topic] = asyncio.Queue()
            self._tasks.append(asyncio.create_task(self._dispatch(topic)))
        self._thread = threading.Thread(
            target=self._thread_main, args=(key_pair, ready), name="qtask-mesh-libp2p", daemon=True
        )
        self._thread.start()
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await ready
        except BaseException:
            await self.stop()
            raise
        for addr in self._bootstrap:
            try:
                await self.connect(addr)
            except MeshPeerError as exc:
                log.warning("mesh_bootstrap_failed", addr=addr, error=str(exc))
        if self._bootstrap:
            self._tasks.append(asyncio.create_task(self._keep_bootstrap()))
        log.info("mesh_host_started", peer_id=self.peer_id, addrs=list(self.addrs))

    async def stop(self) -> None:
        """Stop the host: fail calls in flight, close connections, join the thread. Idempotent."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        # The count changes on the trio thread: polled (10 ms, bounded) rather than signalled.
        deadline = asyncio.get_running_loop().time() + REPLY_FLUSH_S
        while self._answering and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        token, stop_event = self._token, self._stop_event
        if token is not None and stop_event is not None:
            try:
                token.run_sync_soon(stop_event.set)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.error("mesh_host_stop_timeout", timeout_s=STOP_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._peers.clear()
        log.info("mesh_host_stopped", peer_id=self.peer_id)

    # -- calls (asyncio side) -----------------------------------------------------------------

    async def connect(self, multiaddr: str) -> str:
        """Dial a peer by its full multiaddr (with /p2p/<id>); returns its peer id."""
        try:
            info = info_from_p2p_addr(Multiaddr(multiaddr))
        except Exception as exc:  # multiaddr raises several unrelated types
            raise ValueError(f"not a multiaddr with /p2p/<peer id>: {multiaddr!r}: {exc}") from exc
        peer = info.peer_id.to_base58()

        async def dial() -> None:
            with MappedErrors(peer, "connect"), trio.fail_after(self._dial_timeout):
                await self._host.connect(info)

        await self._call(dial)
        return peer

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish `data` on `topic` (signed with this host's key)."""

        async def pub() -> None:
            with MappedErrors(self.peer_id, "publish"):
                await self._pubsub.publish(topic, data)

        await self._call(pub)

    async def request(
        self, peer_id: str, protocol_id: str, data: bytes, *, timeout: float
    ) -> bytes:
        """Send one request on a new stream and return the reply frame.

        Raises PeerTimeoutError past `timeout`, PeerUnreachableError when the peer cannot be
        dialled or the stream breaks (a killed peer: within ~10 ms), MeshProtocolError when the
        peer does not speak `protocol_id` or a frame is too large.
        """
        frame = encode_frame(data)
        try:
            target = ID.from_base58(peer_id)
        except Exception as exc:
            raise ValueError(f"not a peer id: {peer_id!r}") from exc

        async def exchange() -> bytes:
            try:
                with trio.fail_after(timeout):
                    with MappedErrors(peer_id, protocol_id):
                        if len(data) <= CHANNEL_MAX_BYTES:
                            channel = await self._channel(target, peer_id)
                            if channel is not None:
                                return await channel.request(protocol_id, data)
                        stream = await self._stream(target, protocol_id)
                        try:
                            await stream.write(frame)
                            reply = await read_frame(stream)
                        except BaseException:
                            with trio.move_on_after(1):
                                await stream.close()
                            raise
                        # The reply goes back now; the stream closes behind it.
                        assert self._nursery is not None
                        self._nursery.start_soon(_close_quietly, stream)
                        return reply
            except trio.TooSlowError:
                raise PeerTimeoutError(
                    f"peer {peer_id} did not answer {protocol_id} within {timeout} s"
                ) from None

        return await self._call(exchange)

    async def _channel(self, target: Any, peer_id: str) -> _Channel | None:
        """(trio side) The open request channel to `peer_id`, opened when there is none;
        None when the peer does not speak CHANNEL_PROTOCOL. Callers that come while it opens
        wait for the same opening."""
        channel = self._channels.get(peer_id)
        if channel is not None and not channel.closed:
            return channel
        if peer_id in self._no_channel:
            return None
        opening = self._channel_openings.get(peer_id)
        if opening is None:
            opening = self._channel_openings[peer_id] = _Opening()
            assert self._nursery is not None
            self._nursery.start_soon(self._open_channel, target, peer_id, opening)
        await opening.done.wait()
        found: _Channel | None = opening.result()
        return found

    async def _open_channel(self, target: Any, peer_id: str, opening: _Opening) -> None:
        """(trio side, in the nursery) Open and install a channel, whoever still waits."""
        try:
            stream = await self._new_stream(target, CHANNEL_PROTOCOL)
        except Exception as exc:
            if _speaks_not(exc):
                self._no_channel.add(peer_id)
            else:
                opening.error = exc
        except BaseException:  # the host is stopping
            opening.error = PeerUnreachableError(f"no channel to peer {peer_id}: host stopped")
            raise
        else:
            channel = _Channel(peer_id, stream)
            assert self._nursery is not None
            self._nursery.start_soon(self._read_channel, channel)
            self._channels[peer_id] = opening.value = channel
        finally:
            del self._channel_openings[peer_id]
            opening.done.set()

    async def _stream(self, target: Any, protocol_id: str) -> Any:
        """(trio side) A new stream to `target` for `protocol_id`, opened in the nursery; one
        whose caller stopped waiting is reset once open."""
        opening = _Opening()
        assert self._nursery is not None
        self._nursery.start_soon(self._open_stream, target, protocol_id, opening)
        try:
            await opening.done.wait()
        except BaseException:
            opening.abandoned = True
            if opening.value is not None:  # opened, but the caller's timeout came first
                self._nursery.start_soon(_reset_quietly, opening.value)
            raise
        return opening.result()

    async def _open_stream(self, target: Any, protocol_id: str, opening: _Opening) -> None:
        try:
            opening.value = await self._new_stream(target, protocol_id)
        except Exception as exc:
            opening.error = exc
        except BaseException:  # the host is stopping
            opening.error = PeerUnreachableError(f"no {protocol_id} stream: host stopped")
            raise
        finally:
            opening.done.set()
        if opening.abandoned and opening.value is not None:
            await _reset_quietly(opening.value)

    async def _new_stream(self, target: Any, protocol_id: str) -> Any:
        with trio.move_on_after(self._dial_timeout):
            return await self._host.new_stream(target, [TProtocol(protocol_id)])
        raise PeerTimeoutError(
            f"no {protocol_id} stream to peer {target} opened within {self._dial_timeout} s"
        )

    async def _read_channel(self, channel: _Channel) -> None:
        """(trio side) Hand each reply on a channel to its waiting request until it breaks."""
        error: BaseException = PeerUnreachableError(f"channel to peer {channel.peer} closed")
        try:
            while True:
                raw = await read_frame(channel.stream, _CHANNEL_FRAME_LIMIT)
                request_id, status = _REPLY_HEAD.unpack_from(raw)
                channel.answer(request_id, status, raw[_REPLY_HEAD.size :])
        except trio.Cancelled:
            raise
        except Exception as exc:  # the stream broke: every request waiting on it fails
            error = PeerUnreachableError(f"channel to peer {channel.peer} broke: {exc!r}")
        finally:
            channel.close(error)
            if self._channels.get(channel.peer) is channel:
                del self._channels[channel.peer]
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await _reset_quietly(channel.stream)

    async def _keep_bootstrap(self) -> None:
        """Dial each bootstrap peer again whenever it is not connected."""
        wanted = {info_from_p2p_addr(Multiaddr(a)).peer_id.to_base58(): a for a in self._bootstrap}
        while True:
            await asyncio.sleep(self._redial_s)
            for peer, addr in wanted.items():
                if peer in self._peers:
                    continue
                try:
                    await self.connect(addr)
                    log.info("mesh_bootstrap_rejoined", peer=peer)
                except MeshPeerError as exc:
                    log.debug("mesh_bootstrap_failed", addr=addr, error=str(exc))

    def connected_peers(self) -> set[str]:
        """Peer ids with an open connection now."""
        return set(self._peers)

    # -- the bridge ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` as a task on the trio loop and await its result on this asyncio loop."""
        token, nursery, loop = self._token, self._nursery, self._loop
        if token is None or nursery is None or loop is None or self._stopped:
            raise MeshPeerError("the mesh host is not running")
        future: asyncio.Future[T] = loop.create_future()
        scopes: list[trio.CancelScope] = []

        async def run() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                try:
                    result = await fn()
                except trio.Cancelled:
                    loop.call_soon_threadsafe(
                        _fail, future, MeshPeerError("the mesh host stopped during the call")
                    )
                    raise
                except BaseException as exc:  # handed to the awaiting asyncio task
                    loop.call_soon_threadsafe(_fail, future, exc)
                else:
                    loop.call_soon_threadsafe(_succeed, future, result)

        try:
            token.run_sync_soon(nursery.start_soon, run)
        except trio.RunFinishedError:
            raise MeshPeerError("the mesh host is not running") from None
        try:
            return await future
        except asyncio.CancelledError:
            if scopes:
                try:
                    token.run_sync_soon(scopes[0].cancel)
                except trio.RunFinishedError:
                    pass
            raise

    async def _on_asyncio(self, coro: Coroutine[Any, Any, T]) -> T:
        """(trio side) Run `coro` on the asyncio loop and wait for it without blocking trio."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()

    # -- the trio thread ----------------------------------------------------------------------

    def _thread_main(self, key_pair: Any, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            trio.run(self._trio_main, key_pair, ready)
        except BaseException as exc:  # the thread's top level: report, never raise into nothing
            if not ready.done():
                loop.call_soon_threadsafe(_fail, ready, MeshPeerError(f"libp2p failed: {exc!r}"))
            else:
                log.error("mesh_host_crashed", error=repr(exc))
        finally:
            self._token = None
            self._nursery = None
            if self._pubsub is not None:
                # Pubsub's seen-message cache runs a sweeper thread nothing else stops.
                self._pubsub.seen_messages.stop()
            loop.call_soon_threadsafe(self._peers.clear)

    async def _trio_main(self, key_pair: Any, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        listen = [Multiaddr(self._listen)]
        host = new_host(
            key_pair=key_pair,
            listen_addrs=listen,
            # min_connections=0: libp2p's auto-connector otherwise counts a 3-10 peer mesh as
            # "critically" under its floor of 50 and redials the peerstore every 10 s.
            connection_config=ConnectionConfig(max_connections_per_peer=1, min_connections=0),
        )
        degree, low, high = GOSSIP_DEGREE
        gossipsub = GossipSub(
            protocols=[GOSSIPSUB_PROTOCOL_ID],
            degree=degree,
            degree_low=low,
            degree_high=high,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=GOSSIP_HEARTBEAT_S,
            max_messages_per_topic_per_second=self._gossip_rate,
        )
        pubsub = Pubsub(host, gossipsub)
        for protocol_id in self._protocols:
            host.set_stream_handler(TProtocol(protocol_id), self._serve)
        host.set_stream_handler(TProtocol(CHANNEL_PROTOCOL), self._serve_channel)
        host.get_network().register_notifee(_Notifee(self))
        self._host, self._pubsub = host, pubsub
        self._stop_event = trio.Event()
        async with host.run(listen_addrs=listen):
            async with background_trio_service(pubsub), background_trio_service(gossipsub):
                await pubsub.wait_until_ready()
                async with trio.open_nursery() as nursery:
                    for topic in self._topics:
                        subscription = await pubsub.subscribe(topic)
                        nursery.start_soon(self._drain, topic, subscription)
                    self.peer_id = host.get_id().to_base58()
                    self.addrs = tuple(str(a) for a in host.get_addrs())
                    self._nursery = nursery
                    self._token = trio.lowlevel.current_trio_token()
                    loop.call_soon_threadsafe(_succeed, ready, None)
                    await self._stop_event.wait()
                    await self._end_served_channels()
                    self._nursery = None
                    nursery.cancel_scope.cancel()
            # host.run's exit cancels the connections' tasks but leaves their sockets open
            # (ResourceWarning per outbound connection): close the network first.
            with trio.move_on_after(STOP_TIMEOUT_S / 2):
                await host.close()

    async def _drain(self, topic: str, subscription: Any) -> None:
        """(trio side) Empty one subscription's 32-message queue as fast as messages arrive."""
        loop = self._loop
        assert loop is not None
        queue = self._queues[topic]
        while True:
            message = await subscription.get()
            signer = ID(message.from_id).to_base58()
            loop.call_soon_threadsafe(_enqueue, queue, topic, (signer, bytes(message.data)))

    async def _dispatch(self, topic: str) -> None:
        """(asyncio side) Hand each gossip message of `topic` to its handlers, in order."""
        queue = self._queues[topic]
        while True:
            signer, data = await queue.get()
            for handler in self._topics[topic]:
                try:
                    await handler(signer, data)
                except Exception as exc:  # one bad handler must not stop the topic
                    log.exception("mesh_gossip_handler_failed", topic=topic, error=repr(exc))

    async def _serve(self, stream: Any) -> None:
        """(trio side) One inbound request: read a frame, run the asyncio handler, reply."""
        protocol_id = str(stream.get_protocol())
        peer = stream.muxed_conn.peer_id.to_base58()
        handler = self._protocols[protocol_id]
        self._count_answering(1)
        try:
            with trio.fail_after(SERVE_READ_TIMEOUT_S):
                request = await read_frame(stream)

            async def answer() -> bytes:
                return await handler(peer, request)

            reply = await self._on_asyncio(answer())
            await stream.write(encode_frame(reply))
            await stream.close()
        except trio.Cancelled:
            raise
        except Exception as exc:  # the peer sees a reset; we log why
            log.warning("mesh_request_failed", protocol=protocol_id, peer=peer, error=repr(exc))
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:  # already broken: nothing more to tell the peer
                    pass
        finally:
            self._count_answering(-1)

    def _count_answering(self, change: int) -> None:
        with self._answering_lock:
            self._answering += change

    async def _end_served_channels(self) -> None:
        """(trio side, at stop) Half-close each channel a peer opened here, then wait (up to
        REPLY_FLUSH_S) for the peers to close their end.

        A reply written is not yet a reply read: when a connection closes, py-libp2p's yamux
        drops what it had buffered for a stream that its reader had not taken, so a peer whose
        trio thread was busy lost the last reply of a node that stopped right after sending
        it. The end of stream goes out behind the replies; a peer closes its end once it has
        read them all (`_read_channel`), and only then do the connections close.
        """
        if not self._served:
            return
        self._served_ended = ended = trio.Event()
        with trio.move_on_after(REPLY_FLUSH_S):
            for stream in list(self._served):
                await _close_quietly(stream)
            await ended.wait()

    async def _serve_channel(self, stream: Any) -> None:
        """(trio side) A peer's request channel: each request runs on its own (requests to
        different protocols must not wait for each other), replies go back as they are ready."""
        if self._served_ended is not None:  # stopping: a channel opened now would hold it up
            await _reset_quietly(stream)
            return
        self._served.add(stream)
        try:
            await self._serve_requests(stream)
        finally:
            self._served.discard(stream)
            if not self._served and self._served_ended is not None:
                self._served_ended.set()

    async def _serve_requests(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        lock = trio.Lock()
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    raw = await read_frame(stream, _CHANNEL_FRAME_LIMIT)
                    request_id, size = _REQUEST_HEAD.unpack_from(raw)
                    start = _REQUEST_HEAD.size
                    protocol_id = raw[start : start + size].decode()
                    nursery.start_soon(self._answer, stream, lock, peer, request_id, protocol_id,
                                       raw[start + size :])  # fmt: skip
            except trio.Cancelled:
                raise
            except Exception as exc:  # the peer closed the channel or it broke
                log.debug("mesh_channel_closed", peer=peer, error=repr(exc))
            nursery.cancel_scope.cancel()
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await _reset_quietly(stream)

    async def _answer(
        self, stream: Any, lock: trio.Lock, peer: str, request_id: int, protocol_id: str,
        request: bytes,
    ) -> None:  # fmt: skip
        """(trio side) One request that came on a channel: run its handler, send the reply."""
        self._count_answering(1)
        try:
            handler = self._protocols.get(protocol_id)
            status, reply = _OK, b""
            if handler is None:
                status, reply = _UNKNOWN_PROTOCOL, b"no handler"
            else:
                try:

                    async def run() -> bytes:
                        return await handler(peer, request)

                    reply = await self._on_asyncio(run())
                    if len(reply) > MAX_FRAME_BYTES:
                        raise MeshProtocolError(
                            f"frame of {len(reply)} bytes is over {MAX_FRAME_BYTES}"
                        )
                except trio.Cancelled:
                    raise
                except Exception as exc:  # the requester sees a failed request; we log why
                    log.warning("mesh_request_failed", protocol=protocol_id, peer=peer,
                                error=repr(exc))  # fmt: skip
                    status, reply = _FAILED, type(exc).__name__.encode()
            try:
                await _write_frame(
                    stream, lock, encode_frame(reply, _REPLY_HEAD.pack(request_id, status))
                )
            except Exception as exc:  # the channel broke; its reader ends it
                log.debug("mesh_channel_reply_failed", peer=peer, error=repr(exc))
        finally:
            self._count_answering(-1)

    def _peer_changed(self, peer: str, connected: bool) -> None:
        """(asyncio side) Track the peer set and tell the on_peer handlers."""
        if connected:
            self._peers.add(peer)
        else:
            self._peers.discard(peer)
        log.info("mesh_peer_connected" if connected else "mesh_peer_disconnected", peer=peer)
        for handler in self._peer_handlers:
            try:
                handler(peer, connected)
            except Exception as exc:  # a bad callback must not stop the others
                log.exception("mesh_peer_handler_failed", error=repr(exc))


class _Notifee(INotifee):
    """Counts connections per peer; tells asyncio on the 0 -> 1 and 1 -> 0 transitions."""

    def __init__(self, host: MeshHost) -> None:
        self._host = host
        self._conns: dict[str, int] = {}

    def _tell(self, peer: str, connected: bool) -> None:
        loop = self._host._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._host._peer_changed, peer, connected)

    async def connected(self, network: Any, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        self._conns[peer] = self._conns.get(peer, 0) + 1
        if self._conns[peer] == 1:
            self._tell(peer, True)

    async def disconnected(self, network: Any, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        left = self._conns.get(peer, 0) - 1
        if left > 0:
            self._conns[peer] = left
            return
        self._conns.pop(peer, None)
        self._tell(peer, False)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


class _Channel:
    """(trio side) The requester's end of a request channel: requests in flight by id."""

    def __init__(self, peer: str, stream: Any) -> None:
        self.peer = peer
        self.stream = stream
        self.closed = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._lock = trio.Lock()
        self._error: BaseException | None = None

    async def request(self, protocol_id: str, data: bytes) -> bytes:
        request_id = next(self._ids) & 0xFFFFFFFF
        waiter = _Waiter()
        self._waiting[request_id] = waiter
        try:
            name = protocol_id.encode()
            head = _REQUEST_HEAD.pack(request_id, len(name)) + name
            await _write_frame(self.stream, self._lock, encode_frame(data, head), self)
            await waiter.done.wait()
        finally:
            self._waiting.pop(request_id, None)
        if waiter.error is not None:
            raise waiter.error
        if waiter.status == _UNKNOWN_PROTOCOL:
            raise MeshProtocolError(f"peer {self.peer} does not speak {protocol_id}")
        if waiter.status != _OK:
            raise PeerUnreachableError(
                f"{protocol_id} to peer {self.peer} failed: the peer's handler failed "
                f"({waiter.reply.decode(errors='replace')})"
            )
        return waiter.reply

    def answer(self, request_id: int, status: int, reply: bytes) -> None:
        waiter = self._waiting.get(request_id)
        if waiter is not None:  # else: its request timed out or was cancelled
            waiter.status, waiter.reply = status, reply
            waiter.done.set()

    def close(self, error: BaseException) -> None:
        self.closed = True
        for waiter in self._waiting.values():
            waiter.error = error
            waiter.done.set()


class _Opening:
    """(trio side) A stream or channel being opened in the nursery, and who waits for it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Waiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = _OK
        self.reply = b""
        self.error: BaseException | None = None


async def _write_frame(
    stream: Any, lock: trio.Lock, frame: bytes, channel: _Channel | None = None
) -> None:
    """(trio side) One whole frame on a shared stream, shielded from the caller's timeout."""
    if channel is not None and channel.closed:
        raise PeerUnreachableError(f"channel to peer {channel.peer} closed")
    with trio.CancelScope(shield=True):
        async with lock:
            with trio.fail_after(_CHANNEL_WRITE_S):
                try:
                    await stream.write(frame)
                except BaseException:
                    if channel is not None:
                        channel.close(PeerUnreachableError(f"channel to {channel.peer} broke"))
                    await _reset_quietly(stream)
                    raise


def _speaks_not(exc: BaseException) -> bool:
    """Whether a failed stream open means the peer does not speak the protocol."""
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None:
            return False
        if isinstance(cause, MultiselectClientError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


async def _close_quietly(stream: Any) -> None:
    with trio.move_on_after(1):
        try:
            await stream.close()
        except Exception:  # already broken: nothing more to tell the peer
            pass


async def _reset_quietly(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:  # already broken
        pass


def _succeed(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _enqueue(queue: asyncio.Queue[tuple[str, bytes]], topic: str, item: tuple[str, bytes]) -> None:
    if queue.qsize() >= GOSSIP_BACKLOG:
        queue.get_nowait()
        log.warning("mesh_gossip_dropped", topic=topic, backlog=GOSSIP_BACKLOG)
    queue.put_nowait(item)


async def call(
    host: MeshHost,
    peer: str,
    protocol_id: str,
    request: BaseModel,
    reply_type: type[M],
    timeout: float,
) -> M:
    """Send a pydantic request and parse the reply as `reply_type` (MeshProtocolError if not)."""
    raw = await host.request(peer, protocol_id, request.model_dump_json().encode(), timeout=timeout)
    try:
        return reply_type.model_validate_json(raw)
    except ValidationError as exc:
        raise MeshProtocolError(
            f"peer {peer} answered {protocol_id} with an invalid {reply_type.__name__}: {exc}"
        ) from exc
