"""The Log and Store API: appends, reads, truncation, replicas, errors."""

import pytest

from corelog import Store
from corelog.errors import (
    BlockNotAvailable,
    InvalidKey,
    LogNotFound,
    NotWritable,
    OutOfRange,
    StoreLocked,
    StoreNotFound,
)


def test_append_get_iterate(store):
    log = store.get("a")
    assert log.writable and log.length == 0 and log.fork == 0
    assert log.append(b"one") == 1
    assert log.append([b"two", b"three"]) == 3
    assert log.append([]) == 3
    assert log.get(0) == b"one" and log[-1] == b"three"
    assert log[1:] == [b"two", b"three"]
    assert list(log) == [b"one", b"two", b"three"]
    assert log.byte_length == 11
    with pytest.raises(OutOfRange):
        log.get(3)
    with pytest.raises(IndexError):  # OutOfRange is an IndexError too
        log[10]
    with pytest.raises(TypeError):
        log.append("text")
    with pytest.raises(TypeError):
        log.append([b"ok", 5])
    assert log.length == 3  # the failed calls wrote nothing


def test_reopen_keeps_everything(tmp_path):
    with Store(tmp_path / "s") as s:
        log = s.get("a")
        log.append([b"x%d" % i for i in range(100)])
        key, head = log.key, log.head()
        seed = s.seed
    with Store(tmp_path / "s") as s:
        log = s.get("a")
        assert log.key == key and log.head() == head
        assert log.append(b"more") == 101
        assert log.audit().ok
    # the same seed re-creates the same keys in a fresh store
    with Store(tmp_path / "t", seed=seed) as t:
        assert t.get("a").key == key


def test_names_keys_listing(store):
    a, b = store.get("a"), store.get("b")
    assert a.key != b.key and a.discovery_key != a.key
    a.append(b"1")
    assert store.get(key=a.key) is a
    assert "a" in store and a.key in store and "zzz" not in store
    infos = {i.name: i for i in store.list()}
    assert infos["a"].length == 1 and infos["a"].writable and infos["b"].length == 0
    assert store.find(a.discovery_key) is a
    assert store.find(b"\0" * 32) is None
    with pytest.raises(LogNotFound):
        store.get("nope", create=False)
    with pytest.raises(InvalidKey):
        store.get(key=b"short")
    with pytest.raises(TypeError):
        store.get()


def test_replica_is_not_writable(make_store):
    w, r = make_store(), make_store()
    log = w.get("a")
    log.append(b"x")
    rep = r.get(key=log.key)
    assert not rep.writable and rep.length == 0 and rep.manifest is None
    with pytest.raises(NotWritable):
        rep.append(b"y")
    with pytest.raises(NotWritable):
        rep.truncate(0)
    with pytest.raises(NotWritable):
        log.apply(log.proof(0))


def test_truncate(store):
    log = store.get("a")
    log.append([bytes([i]) * 10 for i in range(20)])
    old = log.head()
    log.truncate(7)
    h = log.head()
    assert (h.length, h.fork, h.byte_length) == (7, 1, 70)
    assert h.signature != old.signature
    with pytest.raises(OutOfRange):
        log.get(7)
    with pytest.raises(OutOfRange):
        log.truncate(8)
    log.append(b"new")
    assert log[7] == b"new" and log.length == 8
    assert log.audit().ok
    log.truncate(0)
    assert log.length == 0 and log.fork == 2 and log.audit().ok


def test_store_lock_in_process(tmp_path):
    with Store(tmp_path / "s"):
        with pytest.raises(StoreLocked, match="already open for writing"):
            Store(tmp_path / "s")


def test_readonly(tmp_path):
    with pytest.raises(StoreNotFound):
        Store(tmp_path / "missing", readonly=True)
    with Store(tmp_path / "s") as s:
        s.get("a").append(b"1")
    with Store(tmp_path / "s", readonly=True) as ro:
        log = ro.get("a")
        assert log[0] == b"1" and not log.writable
        with pytest.raises(NotWritable, match="read-only"):
            log.append(b"2")
        with pytest.raises(LogNotFound):
            ro.get("new")


def test_watch(store):
    log = store.get("a")
    seen = []
    unsubscribe = log.watch(lambda lg: seen.append(lg.length))
    log.append(b"1")
    log.append([b"2", b"3"])
    log.truncate(1)
    unsubscribe()
    log.append(b"4")
    assert seen == [1, 3, 1]


def test_watcher_errors_do_not_break_writes(store, caplog):
    log = store.get("a")
    log.watch(lambda lg: 1 / 0)
    assert log.append(b"1") == 1
    assert "watcher" in caplog.text


def test_block_not_available_on_partial_replica(make_store):
    w, r = make_store(), make_store()
    log = w.get("a")
    log.append([b"%d" % i for i in range(10)])
    rep = r.get(key=log.key)
    assert rep.apply(log.proof(0, 4, have=0))  # 4 blocks, head of 10
    assert rep.length == 10 and rep.contiguous_length == 4 and len(rep) == 4
    assert rep[3] == b"3"
    with pytest.raises(BlockNotAvailable):
        rep.get(5)
    assert rep.audit().ok
