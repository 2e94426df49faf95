"""The HTTP server every qtask API process runs: uvicorn, with connection guards of our own.

Why uvicorn with httptools: it is the cheapest ASGI server measured here (0.07 ms of CPU per GET,
0.11 ms per POST; granian was as cheap for GET and dearer for POST, hypercorn 2–3x dearer), and
the per-request cost is what the API's budget is made of. What it lacks is protection from
clients that connect and then stall: it never times out a connection that is silent or stuck in
its request line or headers, and never bounds the header size (one 400 MB header grew an API
from 122 MB to 608 MB). Connection caps do not help: they turn a slow-loris into an outage for
everyone. So `GuardedHttpToolsProtocol` adds, per connection:

- a header deadline (`server.header_timeout_s`): from the connection's first moment, or from the
  first byte of its next request, to the end of the request's headers; a connection that sent
  nothing is closed, one that sent part of a request gets 408 and is closed;
- a header size bound (`server.max_header_bytes`): the request line and headers together; a
  larger block gets 431 and the connection is closed after at most one more read (~256 KiB);
- no half-read request bodies on idle connections: when a response is complete but its
  request's body is not (a route that answered without reading it, or the 408 the routes give a
  body slower than `limits.body_timeout_s`), the connection is closed instead of kept alive.

Idle keep-alive connections close after `server.keep_alive_s` (uvicorn's own timer). Nothing
here times a response: long polls and streams are not stalled clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import signal
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from qtask.api.coalesce import CoalescingTransport
from qtask.config import Settings
from qtask.logs import get_logger

log = get_logger("http_server")

_HEADER_END = b"\r\n\r\n"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a header size bound."""

    # Set per server by `guarded_protocol`.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 << 10

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # A response's headers and body leave in one send (qtask.api.coalesce).
        wrapped = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)  # type: ignore[arg-type]
        # Bytes of the current request's line and headers seen so far; None once they ended.
        self._header_bytes: int | None = 0
        self._tail = b""  # the last bytes of the previous read, for a header end split in two
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._seen_cycle: Any = None  # the last request whose body this protocol looked at
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_bytes is not None:
            if self._header_timer is None:  # the first byte of a request on a kept-alive one
                self._arm_header_timer()
            end = (self._tail + data).find(_HEADER_END)
            counted = len(data) if end < 0 else max(0, end + len(_HEADER_END) - len(self._tail))
            self._header_bytes += counted
            self._tail = data[-3:]
            if self._header_bytes > self.max_header_bytes:
                self._refuse(
                    431,
                    f"The request line and headers exceed {self.max_header_bytes} bytes.",
                )
                return
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen_cycle:
            self._seen_cycle = cycle
            if cycle.more_body:  # its body comes in a later read: the app may answer first
                cycle.send = _closing_send(cycle)  # type: ignore[method-assign]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a request pipelined behind another is timed too
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What comes next belongs to the next request; its deadline starts with its first byte.
        self._header_bytes, self._tail = 0, b""

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Answered before its body arrived in full: the rest of the body would keep the
            # connection busy for nothing (or forever, trickling in).
            self.transport.close()
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._header_bytes is None:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request waits behind a response still being made (a long poll):
            # its headers are timed once that response is done.
            self._arm_header_timer()
            return
        if self._header_bytes == 0:
            self.transport.close()  # a connection that never said anything
            return
        self._refuse(408, f"The request headers did not arrive within {self.header_timeout_s:g} s.")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message`, close the connection, and ignore what follows."""
        self._refused = True
        self._cancel_header_timer()
        phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        body = orjson.dumps({"status": "error", "message": message})
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()
        log.info("http_connection_refused", status=status, reason=message)


def _closing_send(cycle: Any) -> Any:
    """`cycle.send`, saying `connection: close` on a response that starts before its request's
    body arrived in full: on_response_complete closes that connection, and a response that did
    not say so (RFC 9112, 9.6) let a client send its next request into the closed connection
    ("Server disconnected without sending a response": a 401 to a POST, under load)."""
    send = cycle.send

    async def send_closing(message: Any) -> None:
        if message["type"] == "http.response.start" and cycle.more_body:
            cycle.keep_alive = False  # uvicorn adds the header and closes after the body
        await send(message)

    return send_closing


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with the deadlines and bounds of `settings`."""
    server = settings.server
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": server.header_timeout_s,
            "max_header_bytes": server.max_header_bytes,
        },
    )


def raise_open_files_limit() -> int:
    """Lift this process's soft limit on open files to the hard one; return the new limit.

    Each connection is a file descriptor: Debian's default soft limit of 1024 would refuse
    connections long before the server is busy.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return int(hard)
    return int(soft)


def run(app: Any, settings: Settings) -> None:
    """Serve `app` until SIGTERM or SIGINT, then shut down gracefully."""
    raise_open_files_limit()
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.server.keep_alive_s,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.worker.shutdown_grace_s) + 1,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
    # that was installed before it. A no-op handler there makes a clean shutdown exit with 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    # Everything imported and built so far lives as long as the process: out of the collector's
    # sight, a full collection no longer walks it (70-80 ms each, three in a 5 s load; #15).
    gc.freeze()
    uvicorn.Server(config).run()
