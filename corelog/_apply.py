"""Taking data from peers: verify a proof, detect equivocation, reorganise, commit.

Rules (as Hypercore's): within one fork a log only grows, so every node a proof
reveals whose span we already hold must equal the stored one; if it does not,
while both heads carry valid signatures, the writer signed two histories
(*equivocation*): the log is marked conflicted, nothing of the proof is
written, and it refuses further data. A proof from a higher fork (the writer
truncated) reorganises the replica: it keeps the longest prefix of its own
blocks that the new signed tree proves unchanged (stored nodes equal to nodes
of the verified proof, or the prefix the proof itself was verified against),
whatever the peer claims, and drops the rest.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import lmdb

from . import _crypto, _flat
from ._append import delete_from
from ._keys import (
    BLOCK,
    FORK_VALUE,
    KEY,
    NODE,
    NODE_VALUE,
    decode_node,
    fork_key,
    node_key,
    node_value,
)
from ._tree import MAX_LENGTH, Node, Proof, Verified, verify
from ._writer import Followup, LogState
from .errors import BlockNotAvailable, Conflict, InvalidProof, InvalidSignature, NotWritable

NODE_INDEX = struct.Struct(">Q")  # the flat index in a node key (after the u32 log id and the kind byte)

if TYPE_CHECKING:
    from ._log import Head, Log


def check_manifest(log: Log, manifest: bytes | None, stored: bytes | None) -> bytes:
    if manifest is not None:
        if _crypto.log_key(manifest) != log.key:
            raise InvalidProof("the manifest does not hash to this log's key: wrong log or forged data")
        if stored is not None and manifest != stored:
            raise InvalidProof("the manifest differs from the one stored for this log")
        return manifest
    if stored is None:
        raise InvalidProof("this replica does not know the log's manifest yet; the proof must carry it")
    return stored


def _lookup(log: Log, txn: lmdb.Transaction):
    def lookup(x: int) -> Node | None:
        raw = txn.get(node_key(log.id, x), db=log._db)
        return None if raw is None else decode_node(x, raw)

    return lookup


def verify_only(log: Log, proof: Proof) -> Verified:
    manifest = check_manifest(log, proof.manifest, log._manifest)
    if proof.have:
        with log._read() as txn:
            return verify(proof, log.key, _crypto.public_key_of(manifest), _lookup(log, txn))
    return verify(proof, log.key, _crypto.public_key_of(manifest))


def _conflict_error(log: Log, info: dict) -> Conflict:
    where = f" (node {info['node']})" if info.get("node") is not None else ""
    return Conflict(
        f"log {log.key.hex()[:16]}… has two validly signed heads in fork {info['fork']} that disagree"
        f"{where} (lengths {info['ours_length']} and {info['theirs_length']}): the writer's key was used "
        "twice. The log is marked conflicted and refuses new data; stop replicating it and investigate "
        "the writer"
    )


def _conflict_info(
    st: LogState, fork: int, length: int, tree_hash: bytes, sig: bytes, node: int | None
) -> dict:
    return {
        "fork": fork,
        "length": length,  # theirs (kept for older readers)
        "ours_length": st.length,
        "ours": st.tree_hash.hex(),
        "ours_signature": (st.signature or b"").hex(),
        "theirs_length": length,
        "theirs": tree_hash.hex(),
        "their_signature": sig.hex(),
        "node": node,
    }


def _record_conflict(log: Log, info: dict) -> Followup:
    def then(txn: lmdb.Transaction, st: LogState) -> LogState:
        return log._record_part(txn, st, {"conflict": info})

    return Followup(_conflict_error(log, info), then)


def check_head(log: Log, head: Head) -> bool:
    manifest = log._manifest
    if not all(type(v) is int and 0 <= v < MAX_LENGTH for v in (head.fork, head.length)):
        raise InvalidProof(f"a head with fork/length outside [0, {MAX_LENGTH}) cannot be valid")
    if manifest is None:
        return True  # cannot check yet; the proof that follows carries the manifest
    if not _crypto.verify(head.signable(log.key), head.signature, _crypto.public_key_of(manifest)):
        raise InvalidSignature(
            f"head (fork {head.fork}, length {head.length}) has a forged or replayed signature for "
            f"log {log.key.hex()[:16]}…"
        )
    st = log._fresh()
    # (a signature None is our own head, signed when read: it is ours all the same)
    if (
        head.fork == st.fork
        and head.length == st.length
        and head.tree_hash != st.tree_hash
        and st.signature != b""
    ):
        info = _conflict_info(log._signed(st), head.fork, head.length, head.tree_hash, head.signature, None)
        if not log._store.readonly:
            log._set_record(conflict=info)
        raise _conflict_error(log, info)
    if head.fork != st.fork:
        return head.fork > st.fork
    return head.length > st.length


def common_prefix(log: Log, fork: int, contiguous: int) -> int:
    """``Log.common_prefix``: how much of a peer's log at ``fork`` holding ``contiguous`` blocks
    matches ours, from the truncation history (0 where it is missing)."""
    st = log._fresh()
    if fork == st.fork:
        return min(contiguous, st.contig)
    if fork > st.fork:
        return 0
    keep = min(contiguous, st.contig)
    cur = st.fork
    with log._read() as txn:
        while cur > fork:
            raw = txn.get(fork_key(log.id, cur), db=log._db)
            if raw is None:
                return 0
            prev, kept = FORK_VALUE.unpack(raw)
            keep = min(keep, kept)
            cur = prev
    return keep


def _mismatch(
    log: Log,
    txn: lmdb.Transaction,
    nodes: dict[int, tuple[int, int, bytes]],
    limit: int,
    span: tuple[int, int] = (0, 0),
) -> int | None:
    """The first node of ``nodes`` within ``[0, limit)`` that differs from the stored one.

    Nodes with a flat index inside the proof's own block range ``span`` (the bulk:
    every node hashed from its blocks) are compared with one cursor walk over the
    stored nodes in that index range (a replica holds few there: the range starts
    at or near its contiguous end), not one lookup each; the others (O(log n)
    uncles and roots) are looked up one by one.
    """
    get, lid, db = txn.get, log.id, log._db
    leaf_start = _flat.leaf_span
    lo, hi = 2 * span[0], 2 * span[1] - 2
    found: list[int] = []
    for x in sorted(nodes):
        if lo <= x <= hi or leaf_start(x)[0] >= limit:
            continue
        raw = get(node_key(lid, x), db=db)
        if raw is not None and bytes(raw) != node_value(nodes[x]):
            found.append(x)
            break
    if lo <= hi:
        cur = txn.cursor(db=db)
        end = node_key(lid, hi)
        if cur.set_range(node_key(lid, lo)):
            for key, raw in cur:
                if key > end:
                    break
                x = NODE_INDEX.unpack_from(key, 5)[0]
                n = nodes.get(x)
                if n is not None and leaf_start(x)[0] < limit and bytes(raw) != node_value(n):
                    found.append(x)
                    break
    return min(found) if found else None


def _stored(log: Log, txn: lmdb.Transaction, x: int) -> Node | None:
    try:
        return log._node(txn, x)
    except BlockNotAvailable:
        return None


def _reorg_prefix(log: Log, txn: lmdb.Transaction, st: LogState, proof: Proof, verified: Verified) -> int:
    """The longest prefix of our blocks that the new signed tree proves unchanged.

    ``[0, proof.have)`` verified against our own nodes; beyond it, greedily the
    largest node of the verified proof starting where the prefix ends that equals
    the node we hold there.
    """
    limit = min(st.contig, proof.length)
    keep = min(proof.have, limit)
    learnt = verified.nodes
    while keep < limit:
        advanced = False
        for d in range((limit - keep).bit_length(), -1, -1):
            if keep & ((1 << d) - 1) or keep + (1 << d) > limit:
                continue
            x = _flat.index(d, keep >> d)
            n = learnt.get(x)
            if n is None:
                continue
            if _stored(log, txn, x) == n:
                keep += 1 << d
                advanced = True
                break
        if not advanced:
            break
    return keep


def apply_part(log: Log, txn: lmdb.Transaction, st: LogState, proof: Proof) -> tuple[bool, LogState]:
    """The writer part of ``Log.apply`` (runs in the writer's transaction, on the pending state)."""
    if st.record.get("conflict"):
        raise Conflict(f"log {log.key.hex()[:16]}… is marked conflicted; refusing new data")
    if log._secret is not None and st.contig >= st.length:
        raise NotWritable("a writable log does not accept proofs from peers: it is the source of truth")
    stored_manifest = st.record.get("manifest")
    manifest = check_manifest(log, proof.manifest, stored_manifest)
    fork, length, contig = st.fork, st.length, st.contig
    if proof.fork < fork:
        return False, st  # stale: an older fork
    reorg = proof.fork > fork
    if proof.have > contig:
        raise InvalidProof(
            f"proof assumes {proof.have} blocks held but this replica holds {contig}; request a new proof"
        )
    verified = verify(proof, log.key, _crypto.public_key_of(manifest), _lookup(log, txn))
    if not reorg and st.signature != b"":  # we hold a signed head (a replica's: its peer's signature)
        # equivocation: a proof of this fork whose tree disagrees with what we hold
        node = _mismatch(log, txn, verified.nodes, max(length, contig), (proof.start, proof.end))
        if node is not None or (proof.length == length and verified.tree_hash != st.tree_hash):
            raise _record_conflict(
                log, _conflict_info(st, proof.fork, proof.length, verified.tree_hash, proof.signature, node)
            )
        if proof.length < length:
            return False, st  # stale: a shorter head of our fork, consistent with ours
    keep = _reorg_prefix(log, txn, st, proof, verified) if reorg else contig
    if proof.start > keep:
        raise InvalidProof(
            f"proof starts at {proof.start} but this replica holds {keep} blocks"
            f"{' of the new fork' if reorg else ''}: it would leave a gap; request from {keep}"
        )
    db, lid, kpack, vpack = log._db, log.id, KEY.pack, NODE_VALUE.pack
    if reorg:
        delete_from(log, txn, keep, max(length, contig))
        txn.put(fork_key(log.id, proof.fork), FORK_VALUE.pack(fork, keep), db=db)
    new_contig = max(keep, proof.end)
    record = st.record
    if stored_manifest is None:
        record = log._record_part(txn, st, {"manifest": manifest}).record
    if proof.end > keep:
        blocks = proof.blocks[max(0, keep - proof.start) :]
        txn.cursor(db=db).putmulti(
            [(kpack(lid, BLOCK, i), b) for i, b in enumerate(blocks, max(keep, proof.start))]
        )
    # (node_key / node_value inlined: two of these per received block)
    txn.cursor(db=db).putmulti([(kpack(lid, NODE, x), vpack(n[1]) + n[2]) for x, n in verified.nodes.items()])
    if (
        not reorg
        and proof.length == length
        and new_contig == contig
        and proof.signature == st.signature
        and record is st.record
    ):
        return False, st
    roots: tuple[Node, ...] = ()
    if log._secret is not None and new_contig >= proof.length:  # our own log, complete again
        roots = tuple(verified.roots)
    new = LogState(
        proof.fork,
        proof.length,
        new_contig,
        verified.byte_length,
        verified.tree_hash,
        proof.signature,
        roots,
        record,
    )
    return True, new
