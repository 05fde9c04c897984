"""The fleet writer's per-event step: run one event on a machine's staged state.

:func:`stage_event` is what ``Fleet`` does for each queued send inside the batch
transaction, once the machine's :class:`_Stage` is found or loaded: check a timer
event is still due, run the transition on the staged snapshot (a new machine, or one
recorded under another definition, gets a header entry first), and add the encoded
entries to the stage. :func:`stage_group` stages a listener's follow-up sends all or
nothing. Nothing touches the store here; ``_fleet`` writes the stages.
"""

from __future__ import annotations

from collections.abc import Callable

from corelog.errors import CorelogError

from ._entries import encode_header, encode_transition, packed_definition
from ._fleet_records import _Group, _Send, _Stage
from ._fleet_shared import Deferred
from ._interpreter import Event, stamp_invocations
from ._runtime import frozen_snapshot
from .errors import ActionFailed, EventNotAccepted


def stage_event(st: _Stage, op: _Send, now: int) -> list:
    """Stage ``op`` on ``st``; return its change-feed row ``[mid, stage, index, before, after, event]``.

    On any error (a CorelogError: EventNotAccepted, ActionFailed, UnserializableContext...)
    the stage is left exactly as it was.
    """
    chart = st.slot.kind.chart
    add: list[bytes] = []
    snap, header = st.snapshot, st.header
    if op.due is not None and (snap is None or snap.timers.get(op.etype) != op.due):
        raise EventNotAccepted(
            f"timer {op.etype!r} of {op.mid!r} was cancelled or re-armed; nothing recorded"
        )
    if snap is None:  # a new machine: its header (with the initial snapshot) first
        snap = chart.initial_readonly(now)
        add.append(encode_header(chart.definition, chart.hash, snap, now, packed_definition(chart)))
    elif header < 0:  # recorded under another definition, kind registered with migrate=True
        header = st.slot.log.length + len(st.blocks)
        add.append(encode_header(chart.definition, chart.hash, snap, now, packed_definition(chart)))
    ev = Event(op.etype, op.data, now)
    try:
        new = chart.transition(snap, ev)
    except CorelogError:
        raise
    except Exception as exc:
        raise ActionFailed(
            f"machine {op.mid!r} ({st.slot.kind.name}) failed on {op.etype!r}: {type(exc).__name__}: {exc}; "
            "nothing was recorded"
        ) from exc
    if new.invocations:  # new invocations get their idempotency key: this entry's index and fork
        new = stamp_invocations(new, st.slot.log.length + len(st.blocks) + len(add), st.slot.log.fork)
    # read-only (UnserializableContext if not JSON): what callers and listeners get is what is recorded
    new = frozen_snapshot(new)
    if new.output is None and not new.history and not new.timers and not new.invocations:
        extras = None
    else:
        extras = new.extras() or None
    add.append(encode_transition(ev, new, header, extras))
    st.blocks.extend(add)
    st.snapshot, st.header = new, header
    index = st.slot.log.length + len(st.blocks) - 1
    op.result = new
    return [op.mid, st, index, snap, new, ev]


def stage_group(
    op: _Group, stages: dict[str, _Stage], feed: list[list], stage: Callable[[_Send], list]
) -> None:
    """Stage every send of ``op`` (``stage(send)`` gives its feed row) or none of them.

    On a CorelogError it becomes ``op``'s error; on ``Deferred`` (a machine's log is being written
    outside the fleet) it is raised again. Either way ``stages`` and ``feed`` are left as they were.
    """
    saved = {m: (len(s.blocks), s.snapshot, s.header) for m, s in stages.items()}
    nfeed = len(feed)
    try:
        results = []
        for send in op.sends:
            feed.append(stage(send))
            results.append(send.result)
        op.result = results
    except (CorelogError, Deferred) as exc:
        del feed[nfeed:]
        for m in list(stages):
            if m not in saved:
                del stages[m]
            else:
                n, snap, header = saved[m]
                del stages[m].blocks[n:]
                stages[m].snapshot, stages[m].header = snap, header
        if isinstance(exc, Deferred):
            raise
        op.error = exc
