"""`python -m qtask.mesh.identity [FILE]`: a libp2p identity for a fixed peer id.

Prints the identity as the two values docker-compose.mesh.yml reads (the base64 of the Ed25519
key, and the peer id the nodes' bootstrap multiaddr names). With FILE, the key is the one in it
(made there, 0600, if there is none), as `identity_file` would load it.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import structlog

from qtask.mesh._libp2p import ID, Ed25519PrivateKey
from qtask.mesh.wire import load_identity


def peer_id_of(encoded_key: str) -> str:
    """The peer id of a base64 Ed25519 key (as MESH_COORDINATOR_KEY holds it)."""
    private = Ed25519PrivateKey.from_bytes(base64.b64decode(encoded_key))
    return str(ID.from_pubkey(private.get_public_key()).to_base58())


def main(argv: list[str]) -> int:
    """Print MESH_COORDINATOR_KEY=... and MESH_COORDINATOR_PEER_ID=... lines."""
    if argv:
        load_identity(Path(argv[0]))  # made there when missing; refused when readable by others
        key = base64.b64encode(Path(argv[0]).read_bytes()).decode()
    else:
        key = base64.b64encode(Ed25519PrivateKey.new().to_bytes()).decode()
    peer = peer_id_of(key)
    print(f"MESH_COORDINATOR_KEY={key}")
    print(f"MESH_COORDINATOR_PEER_ID={peer}")
    return 0


if __name__ == "__main__":
    # Log lines (mesh_identity_created) to stderr: stdout is the two values alone.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    raise SystemExit(main(sys.argv[1:]))
