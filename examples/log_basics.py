"""The corelog log on its own: append, read, prove, verify on a replica, truncate, audit.

Run: python3 examples/log_basics.py
"""

import tempfile
from pathlib import Path

from corelog import Store

with tempfile.TemporaryDirectory() as tmp:
    with Store(Path(tmp) / "writer") as writer, Store(Path(tmp) / "reader") as reader:
        log = writer.get("greetings")
        log.append(b"hello")
        log.append([b"hola", b"bonjour", b"ciao"])  # one signature, one transaction
        head = log.head()
        print(
            f"log {log.key.hex()[:16]}…  length={head.length} fork={head.fork} tree={head.tree_hash.hex()[:16]}…"
        )

        replica = reader.get(key=log.key)  # knows only the public key
        replica.apply(log.proof(0, log.length))  # verified against the signed head, then committed
        print("replica holds:", [b.decode() for b in replica])

        log.truncate(2)  # fork 1: history rewritten, re-signed
        log.append(b"hallo")
        keep = log.common_prefix(replica.fork, replica.contiguous_length)
        replica.apply(log.proof(keep, log.length, have=keep))  # reorg to the common prefix
        print("after truncate:", [b.decode() for b in replica], "fork", replica.fork)
        print("audit writer:", log.audit().ok, " audit replica:", replica.audit().ok)
