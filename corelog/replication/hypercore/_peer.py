"""One core on one connection: the ``hypercore/alpha`` channel's state machine (sans-IO).

Theory of operation
-------------------
A :class:`Peer` answers the remote's requests from the log (any log: a writer,
or a replica serving the prefix it holds) and, when the log is a replica,
downloads the remote's newer signed head and its blocks.

Serving: on open we send ``sync`` (our head, our record of the peer's length,
``hasManifest``) and ``range{0, contig}``. Every sync from the peer is answered
when we are ahead or its length changed since we last echoed it (a JS reader
asks for an upgrade only once we acknowledged its length). Requests are
answered at once with proofs built from the stored nodes (``_proof.generate``),
or ``noData`` when we lack the block or the fork differs. After an append we
send ``range`` + ``sync``; after a truncation ``range{drop}`` + ``sync`` with the
new fork.

Downloading: (1) while the remote is ahead on our fork and we hold every block
of our signed length, one upgrade request; its answer becomes a corelog
``Proof`` (``have`` = our length) that ``Log.apply`` verifies (signature and
all) and commits. (2) Block requests for ``[contig, length)``, pipelined up to
``window``; each block is hashed up its sibling path to a node we trust
(verified before it is kept) and held until it extends the contiguous prefix;
each contiguous run is committed as one corelog Proof (one signature check per
run). (3) A sync with a higher fork: an upgrade from 0 at that fork; the new
roots that equal our stored nodes are the common prefix we keep, the rest is
replaced in one ``apply`` (corelog's reorg). A valid head that disagrees with
ours at the same fork and length is a Conflict (``Log.apply`` marks the log).

Everything the peer sends is bounded: numbers are capped, requests beyond our
buffers are refused, invalid data raises a typed error that closes only this
connection.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING

from corelog import _crypto, _flat
from corelog._tree import Node, Proof, needed_nodes
from corelog.errors import BlockNotAvailable, Conflict, CorelogError, InvalidProof, InvalidSignature

from . import _messages as m
from ._caps import capability
from ._proof import NodeSource, generate, upgrade_length, verify_block_path
from .errors import CapabilityError, ProofError, WireError

if TYPE_CHECKING:
    from corelog import Log

    from ._protocol import Protocol
    from ._protomux import Channel

_TRACE = bool(os.environ.get("CORELOG_HYPERCORE_TRACE"))
MAX_LENGTH = 2**48  # no real log is longer; a larger announced length is refused
MAX_QUEUED_REQUESTS = 4096  # unanswered requests held while our output is full
MAX_INVALID_REQUESTS = 1024
COMMIT_RUN = 4096  # blocks per commit at most
MAX_PENDING_BYTES = 32 * 1024 * 1024  # verified blocks held in memory until they extend the prefix
WANT_SIZE = 2**21


class Peer:
    def __init__(self, proto: Protocol, log: Log, channel: Channel):
        self.proto = proto
        self.log = log
        self.channel = channel
        # a replica downloads; a writer (or any log of a read-only store) only serves
        self.downloader = not (log.owned or log.store.readonly)
        self.opened = False
        # what the remote told us
        self.remote_fork = 0
        self.remote_length = 0
        self.remote_acked = 0
        self.remote_can_upgrade = False
        self.remote_synced = False
        self.remote_have = 0  # contiguous prefix the remote advertised
        self.remote_downloading = True
        # what we told the remote
        self._echoed = -1
        head = log.head()
        self._announced_fork = head.fork
        self._announced_length = head.length
        # downloading
        self._next_id = 1
        self._free_ids: list[int] = []
        self.inflight: dict[int, int] = {}  # request id -> block index
        self._upgrade: tuple[int, int, int] | None = None  # (id, fork, start)
        self._checking: ProofError | None = None  # a conflict check is in flight after this error
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self._known: dict[int, Node] = {}
        # nodes that answers in flight will bring (so later requests ask for fewer), and
        # blocks that arrived before the answer bringing the node their path ends at
        self._promised: set[int] = set()
        self._unverified: dict[int, m.DataBlock] = {}
        self._cursor = 0
        self._want_sent = -1
        self._no_data = 0
        self._invalid_requests = 0
        self.queued: deque[m.Request] = deque()
        self.blocks_received = 0
        self._seed_known()

    # --- sending ---------------------------------------------------------------------

    def send(self, msg: m.Message) -> None:
        if _TRACE:
            print("->", self.log.key.hex()[:6], msg, flush=True)
        self.proto.mux.send(self.channel, m.type_of(msg), m.encode(msg))

    def _sync(self) -> m.Sync:
        head = self.log.head()
        same = self.remote_fork == head.fork
        rl = min(self.remote_length, head.length) if same else 0
        self._echoed = self.remote_length if same else -1
        return m.Sync(
            head.fork,
            head.length,
            rl,
            can_upgrade=rl < head.length or rl == 0,
            uploading=True,
            downloading=self.downloader,
            has_manifest=self.log.manifest is not None,
        )

    def handshake(self) -> bytes:
        assert self.proto.handshake_hash is not None
        cap = capability(self.proto.handshake_hash, self.log.key, self.proto.initiator)
        return m.encode_handshake(m.Handshake(cap, seeks=False))

    # --- events ----------------------------------------------------------------------

    def on_open(self) -> None:
        assert self.channel.remote_handshake is not None and self.proto.handshake_hash is not None
        try:
            hs = m.decode_handshake(self.channel.remote_handshake)
        except WireError as exc:
            raise WireError(f"malformed hypercore channel handshake: {exc}") from None
        expected = capability(self.proto.handshake_hash, self.log.key, not self.proto.initiator)
        if hs.capability != expected:
            raise CapabilityError(
                f"INVALID_CAPABILITY: the peer sent an invalid replication capability for core "
                f"{self.log.key.hex()[:16]}… (it does not know the key, or replays another connection)"
            )
        self.opened = True
        mux = self.proto.mux
        mux.cork()
        self.send(self._sync())
        contig = self.log.contiguous_length
        if contig:
            self.send(m.Range(0, contig))
        mux.uncork()

    def on_message(self, type_: int, payload) -> None:
        msg = m.decode(type_, payload)
        if _TRACE:
            print("<-", self.log.key.hex()[:6], msg, flush=True)
        if msg is None:
            return
        if isinstance(msg, m.Sync):
            self._on_sync(msg)
        elif isinstance(msg, m.Request):
            self._on_request(msg)
        elif isinstance(msg, m.Data):
            self._on_data(msg)
        elif isinstance(msg, m.NoData):
            self._on_no_data(msg)
        elif isinstance(msg, m.Want):
            contig = self.log.contiguous_length
            if contig:
                self.send(m.Range(0, contig))
        elif isinstance(msg, m.Range):
            self._on_range(msg)
        elif isinstance(msg, m.Bitfield):
            self._on_bitfield(msg)
        # cancel (we answer synchronously), unwant, extension: nothing to do

    # --- remote state ----------------------------------------------------------------

    def _on_sync(self, s: m.Sync) -> None:
        if s.length > MAX_LENGTH or s.fork > MAX_LENGTH:
            raise WireError(f"the peer announced length {s.length} at fork {s.fork}: out of range")
        fork_changed = self.remote_synced and s.fork != self.remote_fork
        self.remote_fork, self.remote_length, self.remote_acked = s.fork, s.length, s.remote_length
        self.remote_can_upgrade = s.can_upgrade
        self.remote_downloading = s.downloading
        first = not self.remote_synced
        self.remote_synced = True
        if fork_changed:
            self.remote_have = min(self.remote_have, s.length)
        head = self.log.head()
        if (
            first
            or fork_changed
            or (s.fork == head.fork and (head.length > s.length or self._echoed != s.length))
        ):
            self.send(self._sync())
        self.update()

    def _on_range(self, r: m.Range) -> None:
        if r.start > MAX_LENGTH or r.length > MAX_LENGTH:
            raise WireError("range out of bounds")
        if r.drop:
            if r.start < self.remote_have:
                self.remote_have = r.start
            return
        if r.start <= self.remote_have:
            self.remote_have = max(self.remote_have, r.start + r.length)
            self.update()

    def _on_bitfield(self, b: m.Bitfield) -> None:
        if b.start > self.remote_have:
            return
        i = b.start
        for w in b.words:
            if w == 0xFFFFFFFF:
                i += 32
                continue
            while w & 1:
                i += 1
                w >>= 1
            break
        if i > self.remote_have:
            self.remote_have = i
            self.update()

    # --- serving ---------------------------------------------------------------------

    def _on_request(self, req: m.Request) -> None:
        if self.queued or self.proto.output_full:
            if len(self.queued) >= MAX_QUEUED_REQUESTS:
                raise WireError(f"the peer has more than {MAX_QUEUED_REQUESTS} requests outstanding")
            self.queued.append(req)
            return
        self.answer(req)

    def answer(self, req: m.Request) -> None:
        log = self.log
        head = log.head()
        contig = log.contiguous_length

        def no(reason: int) -> None:
            if reason == m.INVALID_REQUEST:
                self._invalid_requests += 1
                if self._invalid_requests > MAX_INVALID_REQUESTS:
                    raise WireError(f"the peer sent more than {MAX_INVALID_REQUESTS} invalid requests")
            self.send(m.NoData(req.id, reason))

        if req.fork != head.fork or req.seek is not None:
            return no(m.NOT_AVAILABLE)
        if req.block is not None and req.block[0] >= contig:
            return no(m.NOT_AVAILABLE)
        if req.hash is not None and _flat.leaf_span(req.hash[0])[1] > contig:
            return no(m.NOT_AVAILABLE)
        if req.upgrade is not None and req.upgrade[0] + req.upgrade[1] > head.length:
            return no(m.INVALID_REQUEST)
        if req.block is None and req.hash is None and req.upgrade is None and not req.manifest:
            return no(m.INVALID_REQUEST)
        try:
            g = generate(head.length, log.get_node, block=req.block, hash=req.hash, upgrade=req.upgrade)
            value = log.get(req.block[0]) if req.block is not None else b""
        except ProofError:
            return no(m.INVALID_REQUEST)
        except (BlockNotAvailable, CorelogError):  # truncated meanwhile, or not held
            return no(m.NOT_AVAILABLE)
        data = m.Data(req.id, head.fork)
        if req.block is not None:
            data.block = m.DataBlock(req.block[0], value, g.node or [])
        if req.hash is not None:
            data.hash = m.DataHash(req.hash[0], g.node or [])
        if req.upgrade is not None:
            data.upgrade = m.DataUpgrade(
                req.upgrade[0], req.upgrade[1], g.upgrade or [], g.additional or [], head.encoded_signature
            )
        if req.manifest and log.manifest is not None:
            data.manifest = log.manifest
        self.send(data)

    def local_changed(self) -> None:
        """The log changed here (append, truncate, a download committed): tell the peer."""
        head = self.log.head()
        contig = self.log.contiguous_length
        mux = self.proto.mux
        mux.cork()
        if head.fork != self._announced_fork:
            # several changes may have been coalesced: the fork history says what survived
            kept = min(head.length, self.log.common_prefix(self._announced_fork, self._announced_length))
            if self._announced_length > kept:
                self.send(m.Range(kept, self._announced_length - kept, drop=True))
            self._reset_download()
        if contig:
            self.send(m.Range(0, contig))
        self.send(self._sync())
        mux.uncork()
        self._announced_fork, self._announced_length = head.fork, head.length
        self.update()

    # --- downloading -----------------------------------------------------------------

    def _seed_known(self) -> None:
        try:
            for r in self.log.roots():
                self._known[r.index] = r
        except CorelogError:
            pass
        self._cursor = self.log.contiguous_length

    def _reset_download(self) -> None:
        self.inflight.clear()
        self._pending.clear()
        self._pending_bytes = 0
        self._known.clear()
        self._promised.clear()
        self._unverified.clear()
        self._upgrade = None
        self._seed_known()

    def _new_id(self) -> int:
        if self._free_ids:
            return self._free_ids.pop()
        i = self._next_id
        self._next_id += 1
        return i

    def _done_id(self, i: int) -> None:
        self._free_ids.append(i)

    @property
    def done(self) -> bool:
        """A replica holds everything the remote announced (or we only serve)."""
        if not self.downloader:
            return True
        if not self.remote_synced:
            return False
        head = self.log.head()
        if self.remote_fork > head.fork:
            return False
        if self.remote_fork == head.fork and self.remote_length > head.length:
            return False
        return self.log.contiguous_length >= min(
            head.length, self.remote_have if self.remote_have else head.length
        )

    def _trusted(self, x: int) -> Node | None:
        n = self._known.get(x)
        if n is not None:
            return n
        if _flat.leaf_span(x)[1] <= self.log.contiguous_length:
            try:
                return self.log.get_node(x)
            except CorelogError:
                return None
        return None

    def _has_node(self, x: int, contig: int) -> bool:
        return x in self._known or x in self._promised or _flat.leaf_span(x)[1] <= contig

    def _missing_nodes(self, i: int, length: int, contig: int) -> int:
        head = 2 * length
        x = 2 * i
        n = 0
        while not _contains(x, head) and not self._has_node(x, contig):
            n += 1
            x = _flat.parent(x)
        return n

    def update(self) -> None:
        """Send whatever requests the current state calls for."""
        if not self.downloader or not self.opened or not self.remote_synced or self.log.conflict:
            return
        head = self.log.head()
        contig = self.log.contiguous_length
        if self._upgrade is not None:
            return
        if self.remote_fork > head.fork:
            if not self.inflight:
                self._request_upgrade(self.remote_fork, 0, self.remote_length)
            return
        if self.remote_fork != head.fork:
            return
        if contig >= head.length and self.remote_length > head.length and not self.inflight:
            self._request_upgrade(head.fork, head.length, self.remote_length - head.length)
            return
        if contig >= head.length:
            return
        limit = min(head.length, self.remote_have)
        if limit <= contig and self._want_sent != head.length:
            self._want_sent = head.length
            start = contig - contig % WANT_SIZE
            self.send(m.Want(start, WANT_SIZE))
        # in flight plus held out of order stays near MAX_PENDING_BYTES, whatever the block size
        avg = max(1, head.byte_length // max(1, head.length))
        window = max(1, min(self.proto.window, MAX_PENDING_BYTES // avg))
        i = max(self._cursor, contig)
        # requests go out as one batch frame: a JS responder then reads their blocks in one storage batch
        self.proto.mux.cork()
        try:
            self._request_blocks(i, limit, window, head, contig)
        finally:
            self.proto.mux.uncork()

    def _request_blocks(self, i: int, limit: int, window: int, head, contig: int) -> None:
        while len(self.inflight) < window and i < limit and self._pending_bytes < MAX_PENDING_BYTES:
            if i not in self._pending:
                rid = self._new_id()
                self.inflight[rid] = i
                k = self._missing_nodes(i, head.length, contig)
                x = 2 * i
                self._promised.add(x)
                for _ in range(k):
                    self._promised.add(_flat.sibling(x))
                    x = _flat.parent(x)
                    self._promised.add(x)
                self.send(m.Request(rid, head.fork, block=(i, k)))
            i += 1
        self._cursor = i

    def _request_upgrade(self, fork: int, start: int, length: int) -> None:
        if length <= 0:
            return
        rid = self._new_id()
        self._upgrade = (rid, fork, start)
        self.send(m.Request(rid, fork, upgrade=(start, length), manifest=self.log.manifest is None))

    def _on_no_data(self, nd: m.NoData) -> None:
        if self._upgrade is not None and nd.request == self._upgrade[0]:
            self._done_id(nd.request)
            self._upgrade = None
            self._no_data += 1
        elif nd.request in self.inflight:
            index = self.inflight.pop(nd.request)
            self._done_id(nd.request)
            self._no_data += 1
            self.remote_have = min(self.remote_have, index)
            self._cursor = min(self._cursor, index)
            self._promised.clear()  # what that answer would have brought will not come
            self._retry_unverified()
        else:
            return
        if self._no_data > 4 * MAX_QUEUED_REQUESTS:
            raise WireError("the peer answered too many requests with noData")

    def _on_data(self, d: m.Data) -> None:
        if self._upgrade is not None and d.request == self._upgrade[0] and d.upgrade is not None:
            rid, fork, start = self._upgrade
            self._upgrade = None
            self._done_id(rid)
            if d.fork != fork or d.upgrade.start != start:
                return  # stale answer
            self._apply_upgrade(d)
            self.update()
            return
        index = self.inflight.get(d.request)
        if index is None or d.block is None or d.block.index != index:
            return  # not ours (or a reused id answered late): dropped, as JS does
        del self.inflight[d.request]
        self._done_id(d.request)
        head = self.log.head()
        if d.fork != head.fork:
            return
        if not self._verify(d.block):
            if len(self._unverified) >= 2 * self.proto.window:
                raise WireError("too many blocks whose proofs end at nodes nobody sent")
            self._unverified[index] = d.block
            if not self.inflight:
                self._retry_unverified()
            return
        progress = True
        while progress and self._unverified:  # earlier arrivals that this answer completes
            progress = False
            for i, blk in list(self._unverified.items()):
                if self._verify(blk):
                    del self._unverified[i]
                    progress = True
        if self._unverified and not self.inflight:
            self._retry_unverified()

    def _verify(self, blk: m.DataBlock) -> bool:
        learnt = verify_block_path(blk.index, blk.value, blk.nodes, self._trusted)
        if learnt is None:
            return False
        self._known.update(learnt)
        self._pending[blk.index] = blk.value
        self._pending_bytes += len(blk.value)
        self.blocks_received += 1
        self.proto.dirty.add(self)
        return True

    def _retry_unverified(self) -> None:
        """Ask again, with full proofs, for blocks whose proofs relied on answers that never came."""
        if not self._unverified:
            return
        head = self.log.head()
        contig = self.log.contiguous_length
        self._promised.clear()
        for i in sorted(self._unverified):
            rid = self._new_id()
            self.inflight[rid] = i
            self.send(m.Request(rid, head.fork, block=(i, self._missing_nodes(i, head.length, contig))))
        self._unverified.clear()

    def commit(self) -> None:
        """Commit the contiguous verified blocks held in memory (one Log.apply per run)."""
        log = self.log
        while True:
            head = log.head()
            s = log.contiguous_length
            if s not in self._pending:
                break
            blocks: list[bytes] = []
            i = s
            while i in self._pending and len(blocks) < COMMIT_RUN:
                blocks.append(self._pending[i])
                i += 1
            e = i
            src = NodeSource([], self._trusted)
            nodes = []
            for x in needed_nodes(head.length, s, s, e):
                n = src.get(x)
                if n is None:
                    raise ProofError(f"cannot assemble the proof for blocks [{s}, {e}): node {x} unknown")
                nodes.append(n)
            proof = Proof(head.fork, head.length, head.signature, s, tuple(blocks), tuple(nodes), s, None)
            try:
                log.apply(proof)
            except (InvalidProof, InvalidSignature) as exc:
                raise ProofError(f"downloaded blocks [{s}, {e}) failed verification: {exc}") from None
            for j in range(s, e):
                self._pending_bytes -= len(self._pending.pop(j))
            # nodes inside the committed prefix are in the store now: keep the maps small
            for x in [x for x in self._known if _flat.leaf_span(x)[1] <= e]:
                del self._known[x]
            self._promised = {x for x in self._promised if _flat.leaf_span(x)[1] > e}

    def _apply_upgrade(self, d: m.Data) -> None:
        u = d.upgrade
        assert u is not None
        log = self.log
        head = log.head()
        n = upgrade_length(u.start, u.length, u.additional_nodes)
        if n > MAX_LENGTH or u.start > MAX_LENGTH:
            raise WireError("upgrade to an impossible length")
        try:
            sig = _crypto.decode_signature(u.signature)
        except CorelogError as exc:
            raise ProofError(f"upgrade signature: {exc}") from None
        src = NodeSource(u.nodes + u.additional_nodes, self._trusted)
        reorg = d.fork > head.fork
        if reorg:
            have = 0
            contig = log.contiguous_length
            for r in _flat.full_roots(n):
                hi = _flat.leaf_span(r)[1]
                ours = self._trusted(r) if hi <= contig else None
                theirs = src.get(r)
                if ours is None or theirs is None or ours != theirs:
                    break
                have = hi
        elif self._checking is not None:
            have = 0  # the conflict check: the remote's whole tree against ours
        else:
            if u.start != head.length or log.contiguous_length < head.length:
                return
            have = head.length
        nodes = []
        for x in needed_nodes(n, have, have, have):
            node = src.get(x)
            if node is None:
                raise ProofError(f"the upgrade to length {n} lacks node {x}")
            nodes.append(node)
        manifest = d.manifest if log.manifest is None else None
        if log.manifest is None and manifest is None:
            raise ProofError("the peer did not send the manifest we asked for")
        proof = Proof(d.fork, n, sig, have, (), tuple(nodes), have, manifest)
        checking, self._checking = self._checking, None
        try:
            log.apply(proof)
        except Conflict:
            raise
        except (InvalidProof, InvalidSignature, CorelogError) as exc:
            error = ProofError(f"the peer's upgrade to length {n} (fork {d.fork}) does not verify: {exc}")
            if checking is None and not reorg and head.length and d.fork == head.fork:
                # as hypercore does: ask for the remote's whole tree; a valid one that disagrees
                # with ours is the writer signing two histories (Log.apply records the conflict)
                self._checking = error
                self._request_upgrade(d.fork, 0, self.remote_length)
                return
            raise (checking or error) from None
        if checking is not None:
            raise checking  # the remote's tree agrees with ours: the first proof was just bad
        if reorg:
            self._reset_download()
        self._known.update(src.used)
        self._cursor = log.contiguous_length


def _contains(node: int, x: int) -> bool:
    half = (1 << _flat.depth(node)) - 1
    return node - half <= x <= node + half
