"""The corelog CLI: every subcommand's success and error paths, and a store corrupted on purpose."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner

from corelog import Store
from corelog_cli import cli, mermaid
from machine import Machine
from tests.test_interpreter import COUNTER, COUNTER_IMPL, ORDER, PARALLEL

MARKER = "MARKER-7f3a9c-ENTRY"


def _build(path: Path) -> bytes:
    with Store(path, sync=False) as s:
        m = Machine(s.get("counter"), COUNTER, **COUNTER_IMPL)
        m.send("START", 1)
        for _ in range(6):
            m.send("INCREMENT")
        m.send("STOP", 1000)
        s.get("raw").append([b"not", b"a", b"machine"])
        # an entry written directly in the documented format pins the CLI's reading of it
        import msgpack

        direct = s.get("direct")
        direct.append(
            msgpack.packb(
                {
                    "type": "corelog/machine",
                    "version": 1,
                    "definition": COUNTER,
                    "definition_hash": "x",
                    "state": "idle",
                    "context": {"running": False, "counter": 0},
                    "time": 1,
                }
            )
        )
        direct.append(
            msgpack.packb(
                {
                    "event": {"type": "START", "data": MARKER},
                    "state": "running",
                    "context": {"running": True, "counter": MARKER},
                    "time": 2,
                }
            )
        )
        return m.log.key


@pytest.fixture
def built(tmp_path):
    key = _build(tmp_path / "store")
    return tmp_path / "store", key


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_ls_and_info(built):
    path, key = built
    code, out = run("ls", path)
    assert code == 0 and "counter" in out and "raw" in out and key.hex()[:16] in out
    code, out = run("info", path, "counter")
    assert (
        code == 0
        and "definition hash" in out
        and "counter" in out
        and key.hex()[:40] in out.replace("\n", "")
    )
    code, out = run("info", path, key.hex()[:10])  # unique key prefix
    assert code == 0 and "machine id" in out
    code, out = run("info", path, "raw")
    assert code == 0 and "not a machine log" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "{missing}", "x"], "no corelog store"),
        (["info", "{path}", "nosuch"], "no log named"),
        (["info", "{path}", "0" * 64], "no log with key"),
        (["log", "{path}", "raw"], "not a machine log"),
        (["audit", "{path}", "counter", "--replay", "nocolon"], "MODULE:ATTR"),
        (["audit", "{path}", "counter", "--replay", "no_such_module:X"], "cannot load"),
        (["sync", "{path}", "zz", "127.0.0.1:1"], "64 hex digits"),
    ],
)
def test_user_errors_exit_2_without_traceback(built, tmp_path, args, message):
    path, _ = built
    args = [a.format(path=path, missing=tmp_path / "missing") for a in args]
    code, out = run(*args)
    assert code == 2, out
    assert message in out and "Traceback" not in out


def test_ambiguous_prefix(tmp_path):
    seen: dict[str, bytes] = {}
    prefix = None
    with Store(tmp_path / "s", sync=False) as s:
        for i in range(3000):  # 16 bits of prefix: a shared one turns up after a few hundred keys
            key = s.get(f"log{i}").key
            if key.hex()[:4] in seen:
                prefix = key.hex()[:4]
                break
            seen[key.hex()[:4]] = key
    assert prefix is not None
    code, out = run("info", tmp_path / "s", prefix)
    assert code == 2 and "ambiguous" in out
    code, out = run("info", tmp_path / "s", "zzzzzzzz")
    assert code == 2 and "no log named" in out


def test_log_table_and_json(built):
    path, _ = built
    code, out = run("log", path, "counter")
    assert code == 0 and "INCREMENT" in out and "counter=2" in out and "running=false" in out
    code, out = run("log", path, "counter", "--json", "--from", "1", "--to", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    assert (
        code == 0
        and [r["index"] for r in rows] == [1, 2]
        and rows[0]["event"] == {"type": "START", "data": 1}
    )
    code, out = run("log", path, "direct", "--json")
    assert code == 0 and json.loads(out.splitlines()[1])["context"]["counter"] == MARKER


def test_export_jsonl_and_csv(built, tmp_path):
    path, _ = built
    code, out = run("export", path, "counter", "--format", "jsonl")
    assert code == 0 and len(out.splitlines()) == 9
    target = tmp_path / "out.csv"
    code, _ = run("export", path, "counter", "--format", "csv", "-o", target)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert code == 0 and rows[1]["event"] == "START" and rows[-1]["state"] == "idle"
    assert json.loads(rows[-1]["context"]) == {"running": False, "counter": 1000}


def test_diagram(built):
    path, _ = built
    code, out = run("diagram", path, "counter")
    assert code == 0 and out.startswith("stateDiagram-v2")
    assert "[*] --> idle" in out and "idle --> running : START" in out and "class idle current" in out
    nested = mermaid(ORDER, {"b": "b2"})
    assert (
        'state "a" as a {' in nested
        and "a__a1 --> b__b2 : TO_B2" in nested
        and "class b__b2 current" in nested
    )
    par = mermaid(PARALLEL, {"bold": "on", "italic": "off"})
    assert "--" in [line.strip() for line in par.splitlines()] and "class bold__on current" in par


def test_audit_clean_and_replay(built, tmp_path):
    path, _ = built
    code, out = run("audit", path)
    assert code == 0 and "clean" in out
    code, out = run("audit", path, "counter", "--replay", "tests.test_interpreter:COUNTER_IMPL")
    assert code == 0, out
    impl = tmp_path / "wrong_impl.py"
    impl.write_text(
        "def inc(ctx, ev):\n    ctx['counter'] += 2\n"
        "IMPL = {'actions': {'start': lambda c, e: c.update(running=True, counter=e.data), 'increment': inc,\n"
        "                    'stop': lambda c, e: c.update(running=False, counter=e.data)}}\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        code, out = run("audit", path, "counter", "--replay", "wrong_impl:IMPL")
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 1 and "entry 2 (INCREMENT)" in out.replace("\n", " ")  # the first INCREMENT differs


def _flip_marker(src: Path, dst: Path) -> None:
    """A compact copy of the store (live pages only), then one byte of MARKER flipped in the file."""
    env = lmdb.open(str(src), readonly=True, lock=False, max_dbs=8)
    dst.mkdir()
    env.copy(str(dst), compact=True)
    env.close()
    data = bytearray((dst / "data.mdb").read_bytes())
    pos = data.find(MARKER.encode())
    assert pos > 0 and data.find(MARKER.encode(), pos + 1) > 0  # in the event data and in the context
    data[pos + 3] ^= 0x01
    (dst / "data.mdb").write_bytes(bytes(data))


def test_audit_names_log_and_index_of_a_flipped_byte(built, tmp_path):
    path, _ = built
    bad = tmp_path / "corrupt"
    _flip_marker(path, bad)
    code, out = run("audit", bad)
    flat = out.replace("\n", " ")
    assert code == 1, out
    assert "direct" in flat and "first bad index 1" in flat
    code, out = run("audit", bad, "counter")  # the other logs are untouched
    assert code == 0


def test_real_executable_and_serve_sync(built, tmp_path):
    path, key = built
    exe = shutil.which("corelog")
    assert exe, "the console script is installed by pip install -e ."
    p = subprocess.run([exe, "ls", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "counter" in p.stdout
    p = subprocess.run([exe, "audit", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "no corelog store" in p.stderr
    # serve in one process, sync into a fresh store from another
    server = subprocess.Popen(
        [exe, "serve", str(path), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        assert line, server.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        p = subprocess.run(
            [exe, "sync", str(tmp_path / "mirror"), key.hex(), f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert "9 entries" in p.stdout and "audit ok" in p.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("command", ["ls", "info", "key", "log", "audit", "export", "diagram"])
def test_every_subcommand_reports_a_missing_store_and_an_unknown_log(built, tmp_path, command):
    path, _ = built
    needs_log = command not in ("ls", "audit")
    args = [command, tmp_path / "missing"] + (["counter"] if needs_log else [])
    code, out = run(*args)
    assert code == 2 and "no corelog store" in out and "Traceback" not in out
    if command != "ls":
        code, out = run(command, path, "no-such-log")
        assert code == 2 and "no log named" in out


@pytest.mark.parametrize("command", ["log", "export", "diagram"])
def test_machine_commands_refuse_a_plain_log(built, command):
    path, _ = built
    code, out = run(command, path, "raw")
    assert code == 2 and "not a machine log" in out


def test_sync_to_nowhere_is_a_clear_error(built, tmp_path):
    path, key = built
    code, out = run("sync", tmp_path / "mirror", key.hex(), "127.0.0.1:1")
    assert code == 2 and "cannot connect" in out
    code, out = run("sync", tmp_path / "mirror", key.hex(), "no-port")
    assert code == 2 and "HOST:PORT" in out
