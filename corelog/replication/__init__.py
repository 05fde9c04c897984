"""Merkle-verified, live, multi-log replication between corelog peers.

The protocol is sans-IO (:class:`Connection`, :class:`Replicator`): bytes in,
bytes out, no I/O inside. Thin trio transports run it over memory pipes, TCP
(Noise XX encrypted) and WebRTC data channels. Imports ``corelog`` only. Its
errors live in :mod:`corelog.replication.errors` and are re-exported here.
"""

from ._connection import CLOSED, NEED_DATA, ChannelState, Connection, LocalProtocolError, capability
from ._messages import PROTOCOL_VERSION
from ._noise import NoiseXX
from ._replicator import Limits, Replicator, Stats
from ._secure import SecureStream, secure_stream
from ._session import Session, replicate
from ._signaling import MemorySignaling, Signaling, StreamSignaling, memory_signaling_pair
from ._tcp import connect_tcp, memory_pair, serve_tcp
from ._webrtc import WebRTCStream, candidate_addresses, connect_webrtc
from .errors import (
    ConnectionLost,
    FrameTooLarge,
    HandshakeError,
    ProtocolError,
    RemoteError,
    SyncIncomplete,
    SyncTimeout,
    WebRTCError,
)

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "ChannelState",
    "ConnectionLost",
    "Connection",
    "FrameTooLarge",
    "HandshakeError",
    "Limits",
    "LocalProtocolError",
    "MemorySignaling",
    "NoiseXX",
    "ProtocolError",
    "RemoteError",
    "SecureStream",
    "Replicator",
    "Session",
    "Signaling",
    "StreamSignaling",
    "SyncIncomplete",
    "SyncTimeout",
    "WebRTCError",
    "WebRTCStream",
    "Stats",
    "candidate_addresses",
    "capability",
    "connect_webrtc",
    "connect_tcp",
    "memory_pair",
    "memory_signaling_pair",
    "replicate",
    "secure_stream",
    "serve_tcp",
]
