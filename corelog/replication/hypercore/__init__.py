"""Hypercore 11's wire protocol: replicate corelog logs with real JS Hypercore peers.

The stack, bottom up, each layer sans-IO (bytes in, bytes out):

* ``_encoding``: compact-encoding;
* ``_secretstream``: ``@hyperswarm/secret-stream`` (u24 frames, Noise XX over
  Ed25519 from ``corelog.replication._noise``, libsodium secretstream);
* ``_protomux``: channels, open/reject/close, batches;
* ``_messages``: the ``hypercore/alpha`` messages; ``_caps``: capabilities,
  stream ids, discovery keys; ``_proof``: hypercore-shaped proofs.
"""

from ._caps import capability, discovery_key, stream_id
from ._encoding import Reader, Writer
from ._messages import PROTOCOL
from ._protocol import Protocol
from ._protomux import Mux
from ._secretstream import SecretStream
from ._session import HypercoreSession, connect_hypercore, replicate_hypercore, serve_hypercore
from .errors import CapabilityError, MuxError, PeerTimeout, ProofError, StreamError, WireError

__all__ = [
    "PROTOCOL",
    "CapabilityError",
    "HypercoreSession",
    "Protocol",
    "connect_hypercore",
    "replicate_hypercore",
    "serve_hypercore",
    "PeerTimeout",
    "ProofError",
    "Mux",
    "MuxError",
    "Reader",
    "SecretStream",
    "StreamError",
    "WireError",
    "Writer",
    "capability",
    "discovery_key",
    "stream_id",
]
