"""Layering: the log layer knows nothing of machine or replication; errors live per package."""

import ast
from pathlib import Path

import corelog
import corelog.errors
from corelog.errors import CorelogError
from corelog.machine import errors as machine_errors
from corelog.replication import errors as replication_errors

ROOT = Path(corelog.__file__).parent


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
    return out


def test_log_layer_imports_no_upper_layer():
    for path in [*ROOT.glob("_*.py"), ROOT / "errors.py"]:
        for name in _imports(path):
            assert "machine" not in name and "replication" not in name, (path.name, name)
    for path in (ROOT / "replication").glob("*.py"):
        for name in _imports(path):
            assert "machine" not in name, (path.name, name)


def test_errors_per_package():
    for name in ("MachineError", "EventNotAccepted", "ProtocolError", "HandshakeError"):
        assert not hasattr(corelog.errors, name)
    assert issubclass(machine_errors.MachineError, CorelogError)
    assert issubclass(machine_errors.UnserializableContext, TypeError)
    assert issubclass(replication_errors.FrameTooLarge, replication_errors.ProtocolError)
    assert issubclass(replication_errors.ProtocolError, CorelogError)
    import corelog.machine as m
    import corelog.replication as r

    assert m.EventNotAccepted is machine_errors.EventNotAccepted
    assert r.ProtocolError is replication_errors.ProtocolError
