"""The py-libp2p names the mesh uses, imported once and quietly.

libp2p's websocket transport imports `websockets.legacy`, deprecated since websockets 14, and
warns at import time (an error under pytest's filterwarnings=error); qtask never listens on
websockets through libp2p. Import libp2p names from here, not from libp2p directly.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from libp2p import new_host
    from libp2p.abc import INotifee
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.protocol_muxer.exceptions import MultiselectClientError
    from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_PROTOCOL_ID
    from libp2p.pubsub.gossipsub import GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service
    from multiaddr import Multiaddr

__all__ = [
    "GOSSIPSUB_PROTOCOL_ID",
    "ID",
    "ConnectionConfig",
    "Ed25519PrivateKey",
    "GossipSub",
    "INotifee",
    "KeyPair",
    "Multiaddr",
    "MultiselectClientError",
    "Pubsub",
    "TProtocol",
    "background_trio_service",
    "info_from_p2p_addr",
    "new_host",
]
