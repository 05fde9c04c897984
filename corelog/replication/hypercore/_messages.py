"""The ``hypercore/alpha`` channel messages (hypercore 11 ``lib/messages.js``, ``wire.*``).

One dataclass per message type; ``encode(msg)`` gives the payload bytes (without
the protomux channel/type prefix) and ``decode(type, payload)`` parses one,
raising :class:`WireError` on anything malformed. Trailing bytes are ignored as
in JS, so newer peers' optional fields pass through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corelog._tree import Node

from ._encoding import Reader, WireError, Writer

PROTOCOL = "hypercore/alpha"

SYNC, REQUEST, CANCEL, DATA, NO_DATA, WANT, UNWANT, BITFIELD, RANGE, EXTENSION = range(10)

# sync flags
CAN_UPGRADE, UPLOADING, DOWNLOADING, HAS_MANIFEST, ALLOW_PUSH = 1, 2, 4, 8, 16
# noData reasons
NOT_AVAILABLE, INVALID_REQUEST = 1, 2


@dataclass(slots=True)
class Handshake:
    """The channel-open handshake: whether ``seek`` is supported, and the capability."""

    capability: bytes
    seeks: bool = False


@dataclass(slots=True)
class Sync:
    fork: int
    length: int
    remote_length: int
    can_upgrade: bool = True
    uploading: bool = True
    downloading: bool = True
    has_manifest: bool = False
    allow_push: bool = False


@dataclass(slots=True)
class Request:
    id: int
    fork: int
    block: tuple[int, int] | None = None  # (block index, nodes)
    hash: tuple[int, int] | None = None  # (flat index, nodes)
    seek: tuple[int, int] | None = None  # (bytes, padding)
    upgrade: tuple[int, int] | None = None  # (start, length)
    manifest: bool = False
    priority: int = 0


@dataclass(slots=True)
class Cancel:
    request: int


@dataclass(slots=True)
class DataBlock:
    index: int
    value: bytes
    nodes: list[Node]


@dataclass(slots=True)
class DataHash:
    index: int
    nodes: list[Node]


@dataclass(slots=True)
class DataSeek:
    bytes: int
    nodes: list[Node]


@dataclass(slots=True)
class DataUpgrade:
    start: int
    length: int
    nodes: list[Node]
    additional_nodes: list[Node]
    signature: bytes  # the 68-byte encoded form


@dataclass(slots=True)
class Data:
    request: int
    fork: int
    block: DataBlock | None = None
    hash: DataHash | None = None
    seek: DataSeek | None = None
    upgrade: DataUpgrade | None = None
    manifest: bytes | None = None


@dataclass(slots=True)
class NoData:
    request: int
    reason: int = 0


@dataclass(slots=True)
class Want:
    start: int
    length: int
    any: bool = False


@dataclass(slots=True)
class Unwant:
    start: int
    length: int
    any: bool = False


@dataclass(slots=True)
class Bitfield:
    start: int
    words: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Range:
    start: int
    length: int
    drop: bool = False


@dataclass(slots=True)
class Extension:
    name: str
    message: bytes


Message = Sync | Request | Cancel | Data | NoData | Want | Unwant | Bitfield | Range | Extension

_TYPES: dict[type, int] = {
    Sync: SYNC,
    Request: REQUEST,
    Cancel: CANCEL,
    Data: DATA,
    NoData: NO_DATA,
    Want: WANT,
    Unwant: UNWANT,
    Bitfield: BITFIELD,
    Range: RANGE,
    Extension: EXTENSION,
}


def type_of(msg: Message) -> int:
    return _TYPES[type(msg)]


# --- pieces -------------------------------------------------------------------------


def _write_node(w: Writer, n: Node) -> None:
    w.uint(n.index).uint(n.size).fixed(n.hash)


def _read_node(r: Reader) -> Node:
    return Node(r.uint(), r.uint(), r.fixed(32))


def encode_handshake(h: Handshake) -> bytes:
    return Writer().uint(1 if h.seeks else 0).fixed(h.capability).bytes()


def decode_handshake(r: Reader) -> Handshake:
    flags = r.uint()
    return Handshake(r.fixed(32), bool(flags & 1))


def read_manifest(r: Reader) -> bytes:
    """The bytes of a manifest (only Hypercore 11's default single-signer form is accepted)."""
    start = r.pos
    version = r.uint()
    if version != 1:
        raise WireError(f"manifest version {version}: only version 1 single-signer manifests are supported")
    flags = r.uint()
    if flags:
        raise WireError("manifest with prologue/patch/linked/userData: only default manifests are supported")
    r.uint()  # hash
    r.uint()  # quorum
    n = r.uint()
    if n != 1:
        raise WireError(f"manifest with {n} signers: only single-signer manifests are supported")
    r.uint()  # signature algorithm
    r.fixed(32)
    r.fixed(32)
    return r.buf[start : r.pos]


# --- encode -------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    w = Writer()
    if isinstance(msg, Sync):
        flags = (
            (CAN_UPGRADE if msg.can_upgrade else 0)
            | (UPLOADING if msg.uploading else 0)
            | (DOWNLOADING if msg.downloading else 0)
            | (HAS_MANIFEST if msg.has_manifest else 0)
            | (ALLOW_PUSH if msg.allow_push else 0)
        )
        w.uint(flags).uint(msg.fork).uint(msg.length).uint(msg.remote_length)
    elif isinstance(msg, Request):
        flags = (
            (1 if msg.block else 0)
            | (2 if msg.hash else 0)
            | (4 if msg.seek else 0)
            | (8 if msg.upgrade else 0)
            | (16 if msg.manifest else 0)
            | (32 if msg.priority else 0)
        )
        w.uint(flags).uint(msg.id).uint(msg.fork)
        for part in (msg.block, msg.hash, msg.seek, msg.upgrade):
            if part:
                w.uint(part[0]).uint(part[1])
        if msg.priority:
            w.uint(msg.priority)
    elif isinstance(msg, Cancel):
        w.uint(msg.request)
    elif isinstance(msg, Data):
        flags = (
            (1 if msg.block else 0)
            | (2 if msg.hash else 0)
            | (4 if msg.seek else 0)
            | (8 if msg.upgrade else 0)
            | (16 if msg.manifest else 0)
        )
        w.uint(flags).uint(msg.request).uint(msg.fork)
        if msg.block:
            w.uint(msg.block.index).buffer(msg.block.value).array(msg.block.nodes, _write_node)
        if msg.hash:
            w.uint(msg.hash.index).array(msg.hash.nodes, _write_node)
        if msg.seek:
            w.uint(msg.seek.bytes).array(msg.seek.nodes, _write_node)
        if msg.upgrade:
            u = msg.upgrade
            w.uint(u.start).uint(u.length).array(u.nodes, _write_node).array(u.additional_nodes, _write_node)
            w.optional_buffer(u.signature)
        if msg.manifest:
            w.raw(msg.manifest)
    elif isinstance(msg, NoData):
        w.uint(msg.request)
        if msg.reason:
            w.uint(1).uint(msg.reason)
    elif isinstance(msg, Want | Unwant):
        w.uint(msg.start).uint(msg.length)
        if msg.any:
            w.uint(1)
    elif isinstance(msg, Bitfield):
        w.uint(msg.start).uint32array(msg.words)
    elif isinstance(msg, Range):
        flags = (1 if msg.drop else 0) | (2 if msg.length == 1 else 0)
        w.uint(flags).uint(msg.start)
        if msg.length != 1:
            w.uint(msg.length)
    elif isinstance(msg, Extension):
        w.string(msg.name).raw(msg.message)
    else:  # pragma: no cover - typing guards this
        raise TypeError(f"not a hypercore message: {msg!r}")
    return w.bytes()


# --- decode -------------------------------------------------------------------------


def decode(type_: int, payload: bytes | Reader) -> Message | None:
    """Decode one message; None for a type this version does not know (ignored, as in JS)."""
    r = payload if isinstance(payload, Reader) else Reader(payload)
    if type_ == SYNC:
        flags = r.uint()
        return Sync(
            r.uint(),
            r.uint(),
            r.uint(),
            bool(flags & CAN_UPGRADE),
            bool(flags & UPLOADING),
            bool(flags & DOWNLOADING),
            bool(flags & HAS_MANIFEST),
            bool(flags & ALLOW_PUSH),
        )
    if type_ == REQUEST:
        flags = r.uint()
        req = Request(r.uint(), r.uint())
        if flags & 1:
            req.block = (r.uint(), r.uint())
        if flags & 2:
            req.hash = (r.uint(), r.uint())
        if flags & 4:
            req.seek = (r.uint(), r.uint())
        if flags & 8:
            req.upgrade = (r.uint(), r.uint())
        req.manifest = bool(flags & 16)
        if flags & 32:
            req.priority = r.uint()
        return req
    if type_ == CANCEL:
        return Cancel(r.uint())
    if type_ == DATA:
        flags = r.uint()
        d = Data(r.uint(), r.uint())
        if flags & 1:
            d.block = DataBlock(r.uint(), r.buffer(), r.array(_read_node))
        if flags & 2:
            d.hash = DataHash(r.uint(), r.array(_read_node))
        if flags & 4:
            d.seek = DataSeek(r.uint(), r.array(_read_node))
        if flags & 8:
            d.upgrade = DataUpgrade(
                r.uint(), r.uint(), r.array(_read_node), r.array(_read_node), r.optional_buffer() or b""
            )
        if flags & 16:
            d.manifest = read_manifest(r)
        return d
    if type_ == NO_DATA:
        req_id = r.uint()
        reason = 0
        if r.remaining:
            if r.uint() & 1:
                reason = r.uint()
        return NoData(req_id, reason)
    if type_ in (WANT, UNWANT):
        start, length = r.uint(), r.uint()
        any_ = bool(r.uint() & 1) if r.remaining else False
        return (Want if type_ == WANT else Unwant)(start, length, any_)
    if type_ == BITFIELD:
        return Bitfield(r.uint(), r.uint32array())
    if type_ == RANGE:
        flags = r.uint()
        start = r.uint()
        length = 1 if flags & 2 else r.uint()
        return Range(start, length, bool(flags & 1))
    if type_ == EXTENSION:
        return Extension(r.string(), r.raw())
    return None
