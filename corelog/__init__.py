"""corelog: signed, append-only Merkle logs (Hypercore 11 format) in LMDB.

Synchronous and dependency-light: no asyncio or trio inside. ``machine`` and
``replication`` build on this package; it imports neither.
"""

from . import errors
from ._audit import AuditReport
from ._crypto import discovery_key, log_key, manifest_for
from ._log import Head, Log
from ._store import LogInfo, Store
from ._tree import MAX_BLOCK_SIZE, Node, Proof, Verified, needed_nodes, verify

__all__ = [
    "MAX_BLOCK_SIZE",
    "AuditReport",
    "Head",
    "Log",
    "LogInfo",
    "Node",
    "Proof",
    "Store",
    "Verified",
    "discovery_key",
    "errors",
    "log_key",
    "manifest_for",
    "needed_nodes",
    "verify",
]
__version__ = "0.1.0"
