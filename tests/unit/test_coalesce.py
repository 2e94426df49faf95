"""CoalescingTransport: one send per turn of the event loop, nothing lost or reordered."""

from __future__ import annotations

import asyncio
from typing import Any

from qtask.api.coalesce import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """Records each write as one send; closes like a real transport."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.sends.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def next_turn() -> None:
    await asyncio.sleep(0)


async def test_writes_of_one_turn_leave_in_one_send_in_order() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"")  # nothing to send: adds nothing
    transport.writelines([b"{", b"}"])
    assert inner.sends == []
    assert transport.get_write_buffer_size() == 38 + 2 + 7
    await next_turn()
    assert inner.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


async def test_writes_of_separate_turns_leave_separately() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"data: 1\n\n")
    await next_turn()
    transport.write(bytearray(b"data: 2\n\n"))
    await next_turn()
    assert inner.sends == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_close_and_write_eof_send_what_is_held_first() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"a")
    transport.write_eof()
    assert (inner.sends, inner.eof) == ([b"a"], True)
    transport.write(b"b")
    transport.close()
    assert (inner.sends, inner.closed) == ([b"a", b"b"], True)
    await next_turn()  # the scheduled flush finds nothing left
    assert inner.sends == [b"a", b"b"]


async def test_abort_drops_what_is_held() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"a")
    transport.abort()
    await next_turn()
    assert (inner.sends, inner.aborted) == ([], True)


async def test_held_bytes_are_dropped_once_the_transport_closed_under_them() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"a")
    inner.close()  # e.g. the peer went away
    await next_turn()
    assert inner.sends == []


async def test_everything_else_is_the_wrapped_transports() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    assert transport.is_closing() is False
