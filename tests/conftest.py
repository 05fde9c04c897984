import pytest

from corelog import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", sync=False) as s:
        yield s


@pytest.fixture
def make_store(tmp_path):
    """Open extra stores (e.g. a writer and a replica); all closed at teardown."""
    opened = []
    counter = iter(range(1000))

    def make(name: str | None = None, **kw):
        path = tmp_path / (name or f"store{next(counter)}")
        kw.setdefault("sync", False)
        s = Store(path, **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def fleet(tmp_path):
    """A Fleet over a fresh sync=False store with the chat kind of tests/test_fleet.py registered."""
    from corelog.machine import Fleet

    from .test_fleet import CHAT, CHAT_IMPL, clock

    f = Fleet(Store(tmp_path / "s", sync=False), clock=clock)
    f.register("chat", CHAT, CHAT_IMPL)
    yield f
    f.close()
    f.store.close()
