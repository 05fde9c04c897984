"""Helpers shared by the CLI's command modules: consoles, exit codes, opening stores, finding logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import lmdb
from rich.console import Console
from rich.markup import escape

from corelog import Log, Store
from corelog._crypto import leaf_hash
from corelog.errors import LogNotFound, StoreNotFound
from corelog.machine.errors import NotAMachineLog

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

USAGE, PROBLEMS = 2, 1


class UsageProblem(Exception):
    """A user error: printed as one line, exit code 2."""


def fail(message: str, code: int = USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # one line, never wrapped
    raise SystemExit(code)


PORT = click.IntRange(0, 65535)  # 0: any free port


class Corrupted(Exception):
    """Stored data failed verification while reading: one line, exit code 1."""


def open_store(path: str) -> Store:
    """Open an existing store read-only; never creates anything (UsageProblem if it is not a store)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageProblem(f"{path} is a file, not a corelog store (a store is a directory holding data.mdb)")
    if not (p / "data.mdb").exists():
        raise UsageProblem(f"no corelog store at {path} (a store is a directory holding data.mdb)")
    try:
        return Store(p, readonly=True)
    except lmdb.NotFoundError:  # an LMDB environment without corelog's named databases
        raise UsageProblem(
            f"{path} is not a corelog store (an LMDB environment without corelog's databases)"
        ) from None
    except StoreNotFound as exc:
        raise UsageProblem(f"{path} is not a corelog store ({exc})") from None


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, trio's Cancelled left out."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out += leaves(e)
        return out
    return [] if type(exc).__name__ == "Cancelled" else [exc]


def single(exc: BaseException) -> BaseException:
    """The one real error of a group (KeyboardInterrupt wins), else ``exc`` itself."""
    found = leaves(exc)
    for e in found:
        if isinstance(e, KeyboardInterrupt):
            return e
    return found[0] if len(found) == 1 else exc


MIN_PREFIX = 8
HEX = set("0123456789abcdef")


def find_log(store: Store, spec: str) -> Log:
    """A log by name, full hex key (64 digits), or unique hex-key prefix (>= 8 digits).

    A name wins over a key prefix that happens to spell it. Unknown or ambiguous: UsageProblem.
    """
    if spec in store:
        return store.get(spec, create=False)
    lowered = spec.lower()
    hint = "give a name, a 64-hex-digit key or a unique key prefix of 8+ hex digits; `corelog ls STORE` lists them"
    if lowered and set(lowered) <= HEX:
        if len(lowered) == 64:
            try:
                return store.get(key=bytes.fromhex(lowered), create=False)
            except LogNotFound:
                raise UsageProblem(f"no log with key {lowered} in {store.path}") from None
        if len(lowered) > 64:
            raise UsageProblem(f"{spec!r} is not a log key: a key is 64 hex digits, this has {len(lowered)}")
        if len(lowered) < MIN_PREFIX:
            raise UsageProblem(
                f"no log named {spec!r} in {store.path}, and a key prefix needs at least {MIN_PREFIX} hex digits"
            )
        matches = [k for k in store.keys() if k.hex().startswith(lowered)]
        if len(matches) == 1:
            return store.get(key=matches[0], create=False)
        if len(matches) > 1:
            shown = ", ".join(k.hex()[:16] for k in matches[:4]) + (", ..." if len(matches) > 4 else "")
            raise UsageProblem(
                f"key prefix {spec!r} is ambiguous: {len(matches)} logs match ({shown}); give more digits"
            )
        raise UsageProblem(f"no log named {spec!r} and no key starting with it in {store.path} ({hint})")
    raise UsageProblem(f"no log named {spec!r} in {store.path} ({hint})")


def machine_header(log: Log) -> dict | None:
    """The machine header of a log (entry 0), or None if it is not a machine log."""
    from corelog.machine import decode_entry

    if log.contiguous_length == 0:
        return None
    try:
        entry = decode_entry(0, log.get(0))
    except NotAMachineLog:
        return None
    return {
        "id": (entry.definition or {}).get("id"),
        "definition_hash": entry.definition_hash,
        "definition": entry.definition,
    }


def short(b: bytes) -> str:
    return b.hex()[:16] + "…"


def size(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return str(x)


def entries(lg: Log, start: int, stop: int | None) -> Iterator[Any]:
    """Decoded machine entries ``[start, stop)``, streamed, each checked against its Merkle leaf.

    A block whose hash is not its stored leaf node's (tampered or damaged) raises
    Corrupted naming the index: reading commands never print unverified entries
    as if they were sound. (``corelog audit`` checks the whole tree and the signature.)
    """
    from corelog.machine import decode_entry

    stop = lg.contiguous_length if stop is None else min(stop, lg.contiguous_length)
    for i, data in enumerate(lg.iter(start, stop), start):
        node = lg.get_node(2 * i)
        if node.size != len(data) or node.hash != leaf_hash(data):
            raise Corrupted(
                f"entry {i} of log {lg.name or lg.key.hex()} does not match its Merkle leaf: the store is "
                f"damaged or was tampered with; run `corelog audit {lg.store.path}` for details"
            )
        yield decode_entry(i, data)


def diff(before: dict | None, after: dict) -> str:
    if before is None:
        return json.dumps(after, ensure_ascii=False)
    parts = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            parts.append(f"-{k}")
        elif before.get(k, object()) != after[k]:
            parts.append(f"{k}={json.dumps(after[k], ensure_ascii=False)}")
    return ", ".join(parts) or "(unchanged)"


def entry_dict(e) -> dict:
    d = e.to_dict()
    if e.kind == "header":
        d["definition_hash"] = e.definition_hash
    return d


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def value(state: Any) -> str:
    return state if isinstance(state, str) else json.dumps(state, ensure_ascii=False)


def conflict_line(lg: Log) -> str:
    """One line (rich markup) naming a conflicted log, its fork and the two signed heads that disagree."""
    c = lg.conflict or {}
    label = lg.name or short(lg.key)
    ours, theirs = c.get("ours"), c.get("theirs")
    heads = (
        f"this store's signed head has length {c.get('ours_length', '?')}"
        + (f" (tree {ours[:16]}…)" if ours else "")
        + f", another validly signed head has length {c.get('theirs_length', c.get('length', '?'))}"
        + (f" (tree {theirs[:16]}…)" if theirs else "")
        + (f", disagreeing at node {c['node']}" if c.get("node") is not None else "")
    )
    return escape(
        f"log {label} ({lg.key.hex()}): conflict in fork {c.get('fork', '?')}: the writer signed two "
        f"histories ({heads}); the log is marked conflicted and takes no more data from peers; "
        "`corelog info` shows both heads"
    )
