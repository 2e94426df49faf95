"""A transport wrapper that joins the writes of one event-loop turn into one send.

uvicorn writes a response's status line and headers, then its body, as two `transport.write`
calls, and the event loop's transport sends each at once: two `send` system calls (and two TCP
segments for the client to read) for every small JSON answer. Under polling clients those
calls were a quarter of the API's CPU (py-spy, 64 clients polling every 10 ms; issue 15).
`CoalescingTransport` keeps what is written during one turn of the loop and sends it as one
write at the end of that turn (`loop.call_soon`), so a response made in one go leaves in one
send, and a response written over several turns (a stream) still leaves each part in the turn
it was written. Closing, `write_eof` and reading the buffer size see the held bytes first.

Nothing here parses HTTP or changes a byte of what is sent; everything else goes to the
wrapped transport.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps an `asyncio.Transport`; see the module docstring."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold `data` until the end of this turn of the event loop."""
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        """Hold each of `lines`, as write() does."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send what is held, in one write."""
        if not self._held:
            return
        held, self._held = self._held, []
        if self._transport.is_closing():
            return  # the wrapped transport would drop it too (and warn)
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Send what is held, then end the stream."""
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        """Drop what is held and close at once."""
        self._held = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        """Bytes held here and in the wrapped transport's buffer."""
        return sum(map(len, self._held)) + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, get_extra_info, pause_reading, set_protocol, ...).
        return getattr(self._transport, name)
