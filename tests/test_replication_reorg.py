"""Reorg safety at protocol level: the replica decides the common prefix from its own stored nodes;
a peer claiming a shorter common prefix cannot make it drop blocks the new signed head still proves."""

from __future__ import annotations

from corelog.replication._messages import Data

from .test_replication_protocol import pair, pump


def test_a_lying_relay_cannot_make_the_replica_drop_valid_blocks(make_store):
    ws, rs = make_store("w"), make_store("r")
    log = ws.get("log")
    log.append([b"entry %d" % i for i in range(100)])
    rep = rs.get(key=log.key)
    pump(*pair(ws, rs))
    assert rep.contiguous_length == 100
    log.truncate(80)
    log.append([b"new %d" % i for i in range(20)])  # fork 1, length 100; [0, 80) unchanged
    lied = []

    def lie(m):
        if isinstance(m, Data) and m.fork == 1 and not lied:
            p = log.proof(10, 11, have=10)  # "our common prefix is only 10 blocks"
            lied.append(m)
            return Data(
                m.channel,
                m.id,
                p.fork,
                p.length,
                p.signature,
                p.start,
                list(p.blocks),
                [[n.index, n.size, n.hash] for n in p.nodes],
                p.have,
                p.manifest,
            )
        return m

    a, b = pair(ws, rs)
    pump(a, b, tamper=lie)
    assert lied, "the reorg went through the lying relay"
    assert rep.fork == 1 and rep.audit().ok
    assert rep.contiguous_length >= 80, "blocks still proven by the new head were kept"
    assert list(rep)[:80] == [b"entry %d" % i for i in range(80)]
    pump(*pair(ws, rs))  # an honest peer completes it
    assert list(rep) == list(log) and rep.head() == log.head()


def test_equivocation_found_during_sync_is_recorded_and_the_channel_closed(make_store):
    import os

    seed = os.urandom(32)
    w1, w2 = make_store("w1", seed=seed), make_store("w2", seed=seed)
    l1, l2 = w1.get("same"), w2.get("same")
    l1.append([b"a", b"b", b"c"])
    l2.append([b"a", b"X", b"c", b"d"])  # another history under the same key, longer
    rs = make_store("r")
    rep = rs.get(key=l1.key)
    pump(*pair(w1, rs))
    a, b = pair(w2, rs)
    pump(a, b)
    assert b.error is None, b.error
    assert rep.conflict is not None and b.stats.conflicts == [rep.key], (rep.length, b.stats)
    assert list(rep)[:3] == [b"a", b"b", b"c"]
