"""What the mesh puts on the wire besides libp2p itself: framing, the host's key file, and the
mapping of libp2p's and trio's transport exceptions to qtask's mesh errors.

Framing (protocol.py): a 4-byte big-endian length, then that many bytes; frames over
`MAX_FRAME_BYTES` are refused at both ends. Reads and writes here run on the trio side.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

import trio

from qtask.errors import (
    ConfigError,
    MeshPeerError,
    MeshProtocolError,
    PeerUnreachableError,
)
from qtask.logs import get_logger
from qtask.mesh._libp2p import Ed25519PrivateKey, KeyPair, MultiselectClientError
from qtask.mesh.protocol import MAX_FRAME_BYTES

log = get_logger("mesh.wire")

_LEN = struct.Struct(">I")


def encode_frame(data: bytes, head: bytes = b"") -> bytes:
    """One frame: 4-byte big-endian length, then `head` (a channel's header, not counted
    against the limit) and the bytes."""
    if len(data) > MAX_FRAME_BYTES:
        raise MeshProtocolError(f"frame of {len(data)} bytes is over {MAX_FRAME_BYTES}")
    return _LEN.pack(len(head) + len(data)) + head + data


def load_identity(path: Path | None) -> Any:
    """The host's Ed25519 key pair: read from `path`, or made and written there (0600).

    None: a new identity per run. A key file that others can read is refused.
    """
    if path is None:
        private = Ed25519PrivateKey.new()
        return KeyPair(private, private.get_public_key())
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        private = Ed25519PrivateKey.new()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(private.to_bytes())
        os.replace(tmp, path)
        log.info("mesh_identity_created", identity_file=str(path))
        return KeyPair(private, private.get_public_key())
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"mesh identity_file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            "chmod 600 it"
        )
    try:
        private = Ed25519PrivateKey.from_bytes(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"mesh identity_file {path} holds no Ed25519 key: {exc}") from exc
    return KeyPair(private, private.get_public_key())


async def read_exactly(stream: Any, n: int) -> bytes:
    """(trio side) Exactly `n` bytes from a stream (reads may return less)."""
    parts: list[bytes] = []
    left = n
    while left:
        chunk = await stream.read(left)
        if not chunk:
            raise PeerUnreachableError("stream ended mid-frame")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


async def read_frame(stream: Any, limit: int = MAX_FRAME_BYTES) -> bytes:
    """(trio side) One frame from a libp2p stream; MeshProtocolError if it is over `limit`."""
    (length,) = _LEN.unpack(await read_exactly(stream, _LEN.size))
    if length > limit:
        raise MeshProtocolError(f"frame of {length} bytes is over {limit}")
    return await read_exactly(stream, length)


class MappedErrors:
    """Turn libp2p's and trio's transport exceptions into qtask's mesh errors."""

    def __init__(self, peer: str, what: str) -> None:
        self._peer, self._what = peer, what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or isinstance(exc, (MeshPeerError, trio.Cancelled, trio.TooSlowError)):
            return
        if not isinstance(exc, Exception):
            return
        chain: list[BaseException] = []
        cause: BaseException | None = exc
        while cause is not None and len(chain) < 10:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if any(isinstance(e, MultiselectClientError) for e in chain):
            raise MeshProtocolError(
                f"peer {self._peer} does not speak {self._what}: {detail}"
            ) from exc
        raise PeerUnreachableError(f"{self._what} to peer {self._peer} failed: {detail}") from exc
