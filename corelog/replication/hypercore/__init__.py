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
from ._encoding import Reader, WireError, Writer
from ._messages import PROTOCOL
from ._protomux import Mux, MuxError
from ._secretstream import SecretStream, StreamError

__all__ = [
    "PROTOCOL",
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
