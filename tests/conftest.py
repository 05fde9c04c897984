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
