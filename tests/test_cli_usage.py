"""The CLI as a new user meets it, through the real ``corelog`` executable: Ctrl-C, ports, hosts, paths that
are not stores, partial replicas, streaming ``log``, ``export`` into pipes and missing folders, tampered
entries, ``serve`` beside the writing app. Every error is one line with the documented exit code.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import msgpack
import pytest

from corelog import Store
from corelog.machine import Machine, definition_hash

from .test_cli import COUNTER, COUNTER_IMPL, DOOR_ENTRIES, _build, _corrupt_copy

EXE = shutil.which("corelog")
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
ENV.pop("COLUMNS", None)


def exe(*args, timeout=60, **kw) -> subprocess.CompletedProcess:
    assert EXE, "the console script is installed by pip install -e ."
    return subprocess.run(
        [EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV, **kw
    )


def one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Exit ``code``, exactly one line on stderr starting with 'error:', mentioning every word."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in p.stdout + p.stderr


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("usage") / "store"
    return path, _build(path)


def start(*args) -> subprocess.Popen:
    """A long-running corelog command in its own session (so a test can send it Ctrl-C)."""
    return subprocess.Popen(
        [EXE, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )


def ctrl_c(proc: subprocess.Popen) -> tuple[int, str, str]:
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out, err


def serving_port(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    assert line.startswith("serving"), line + proc.stderr.read()
    return int(line.rsplit(":", 1)[1])


# --- paths that are not stores: nothing is ever created ----------------------------------------------------


@pytest.fixture
def not_stores(tmp_path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("hello")
    plain = tmp_path / "plain-lmdb"
    env = lmdb.open(str(plain))
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    return {"missing": tmp_path / "no" / "such" / "path", "empty": empty, "file": afile, "lmdb": plain}


def _snapshot(root: Path) -> dict[str, int]:
    """Every path under root, with sizes of the files a reader must not write (LMDB's lock file it may)."""
    return {
        str(p.relative_to(root)): 0 if p.name == "lock.mdb" else p.stat().st_size for p in root.rglob("*")
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "lmdb"])
def test_reading_and_serving_commands_never_create_a_store(not_stores, tmp_path, kind):
    path = not_stores[kind]
    before = _snapshot(tmp_path)
    expected = {
        "missing": "no corelog store",
        "empty": "no corelog store",
        "file": "is a file, not a corelog store",
        "lmdb": "is not a corelog store",
    }[kind]
    commands = [["ls", path], ["serve", path, "--port", "0"]]
    if kind == "lmdb":  # every command goes through the same check; try them all on the trickiest case
        commands += [["info", path, "counter"], ["log", path, "c"], ["audit", path], ["export", path, "c"]]
    for args in commands:
        one_line_error(exe(*args), 2, expected, str(path))
    assert _snapshot(tmp_path) == before


# --- ports and hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-5", "http"])
def test_invalid_ports_are_one_line_usage_errors(store, port):
    path, _ = store
    one_line_error(exe("serve", path, "--port", port), 2, "--port", port)


def test_a_busy_port_and_an_unknown_host_are_usage_errors_naming_them(store):
    path, _ = store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line_error(exe("serve", path, "--port", port), 2, f"127.0.0.1:{port}", "--port")
    one_line_error(exe("serve", path, "--host", "no-such-host.invalid"), 2, "no-such-host.invalid")


def test_unreachable_peers_are_usage_errors_and_leave_no_store_behind(store, tmp_path):
    _, key = store
    mirror = tmp_path / "mirror"
    one_line_error(exe("sync", mirror, key.hex(), "127.0.0.1:1"), 2, "cannot connect to 127.0.0.1:1")
    one_line_error(exe("sync", mirror, key.hex(), "no-such-host.invalid:7400"), 2, "no-such-host.invalid")
    one_line_error(exe("sync", mirror, key.hex(), "127.0.0.1:70000"), 2, "70000")
    assert not mirror.exists()
    mirror.mkdir()  # an empty folder the user made stays, and stays empty
    one_line_error(exe("sync", mirror, key.hex(), "127.0.0.1:1"), 2, "cannot connect")
    assert list(mirror.iterdir()) == []


# --- serve beside the writing app, live; Ctrl-C ----------------------------------------------------------


def _wait_for(predicate, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _held(path: Path, key: bytes) -> int:
    if not (path / "data.mdb").exists():
        return 0
    try:
        with Store(path, readonly=True) as s:
            return s.get(key=key, create=False).contiguous_length if key in s else 0
    except Exception:  # the syncing process is still creating it
        return 0


def test_serve_runs_beside_the_writer_and_live_sync_follows_its_commits_then_ctrl_c(tmp_path):
    app = tmp_path / "app"
    mirror = tmp_path / "mirror"
    with Store(app, sync=False) as s:  # the app: holds the store open for writing the whole time
        m = Machine(s.get("counter"), COUNTER, **COUNTER_IMPL)
        m.send("START", 1)
        server = start("serve", app, "--port", "0")
        follower = None
        try:
            port = serving_port(server)
            follower = start("sync", mirror, m.log.key.hex(), f"127.0.0.1:{port}", "--live")
            _wait_for(lambda: _held(mirror, m.log.key) == 2)
            m.send("INCREMENT")  # committed by the app, announced by the read-only server
            m.send("INCREMENT")
            _wait_for(lambda: _held(mirror, m.log.key) == 4)
            code, out, err = ctrl_c(follower)
            assert code == 130 and "4 entries" in out and len(err.strip().splitlines()) <= 1, (out, err)
            assert "Traceback" not in err
            m.send("STOP")  # the app was never blocked
        finally:
            if follower is not None and follower.poll() is None:
                follower.kill()
            code, out, err = ctrl_c(server)
        assert code == 130 and err.strip() == "" and "Traceback" not in out


def test_ctrl_c_on_the_two_peer_demo_is_quiet(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "examples" / "two_peer_sync.py"),
            "--events",
            "1000",
            "--interval",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        for _ in range(200):  # until peer B prints its first replicated entry
            line = proc.stdout.readline()
            if not line or line.startswith("B  #"):
                break
        assert line.startswith("B  #"), line + proc.stderr.read()
        code, _out, err = ctrl_c(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err  # A and B: "interrupted" each


# --- ls and info: held vs signed -----------------------------------------------------------------------------


def test_ls_and_info_show_held_and_signed_lengths_of_a_partial_replica(tmp_path):
    with Store(tmp_path / "w", sync=False) as w, Store(tmp_path / "r", sync=False) as r:
        log = w.get("big")
        log.append([b"x%d" % i for i in range(10)])
        replica = r.get(key=log.key)
        replica.apply(log.proof(0, 4, upto=10))  # blocks 0..3 under the head of length 10
        assert (replica.length, replica.contiguous_length) == (10, 4)
    p = exe("ls", tmp_path / "r")
    assert p.returncode == 0
    row = next(line for line in p.stdout.splitlines() if log.key.hex()[:16] in line)
    assert row.split("│")[3].strip() == "4" and row.split("│")[4].strip() == "10", p.stdout
    header = next(line for line in p.stdout.splitlines() if "┃" in line)
    assert header.index("held") < header.index("signed")
    p = exe("info", tmp_path / "r", log.key.hex())
    assert p.returncode == 0
    assert "signed length:   10" in p.stdout and "held:            4 (incomplete: 6 signed" in p.stdout


# --- log streams ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A 100,000-entry machine log, written in one batch in the documented entry format."""
    path = tmp_path_factory.mktemp("big") / "s"
    header = {**DOOR_ENTRIES[0], "definition": COUNTER, "definition_hash": definition_hash(COUNTER)}
    header["state"], header["context"] = "idle", {"running": False, "counter": 0}
    steps = [
        {"event": {"type": "INCREMENT"}, "state": "running", "context": {"counter": i}, "time": i}
        for i in range(1, 100_000)
    ]
    with Store(path, sync=False) as s:
        s.get("big").append([msgpack.packb(header)] + [msgpack.packb(e) for e in steps])
    return path


def test_log_defaults_to_the_last_entries_with_a_hint(big):
    p = exe("log", big, "big")
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 20 and rows[0].split()[0] == "99980" and rows[-1].split()[0] == "99999"
    assert "last 20 of 100000" in p.stderr and "--all" in p.stderr
    p = exe("log", big, "big", "-n", "3", "--json")
    assert p.returncode == 0 and all(json.loads(line)["kind"] for line in p.stdout.splitlines())
    assert len(p.stdout.splitlines()) == 3 and p.stderr == ""
    one_line_error(exe("log", big, "big", "--all", "--from", "3"), 2, "one of")


def test_log_all_streams_first_rows_at_once_with_flat_memory(big):
    started = time.monotonic()
    proc = subprocess.Popen(
        [EXE, "log", str(big), "big", "--all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    first = [proc.stdout.readline() for _ in range(3)]
    took = time.monotonic() - started
    proc.stdout.close()  # like `| head -3`
    code = proc.wait(timeout=30)
    assert b"(header)" in first[2] and took < 10, (first, took)
    assert code == 0 and proc.stderr.read() == b""
    # memory: the whole log through a pipe to /dev/null stays near the interpreter's own size
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, subprocess, sys; "
            f"subprocess.run([{EXE!r}, 'log', {str(big)!r}, 'big', '--all', '--json'], "
            "stdout=subprocess.DEVNULL, check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) < 150_000, f"peak RSS {int(p.stdout) // 1024} MiB for 100k entries"  # KiB
    assert resource  # (used in the child)


# --- export -------------------------------------------------------------------------------------------------


def test_export_into_a_pipe_that_closes_exits_0(big):
    proc = subprocess.Popen(
        [EXE, "export", str(big), "big"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    assert proc.stdout.readline().startswith(b'{"index": 0')
    proc.stdout.close()
    assert proc.wait(timeout=30) == 0 and proc.stderr.read() == b""


def test_export_into_a_missing_folder_is_a_usage_error(store, tmp_path):
    path, _ = store
    target = tmp_path / "missing" / "dir" / "x.csv"
    one_line_error(exe("export", path, "counter", "--format", "csv", "-o", target), 2, str(target))
    assert not (tmp_path / "missing").exists()


def test_log_and_export_refuse_tampered_entries(store, tmp_path):
    path, _ = store
    bad = tmp_path / "corrupt"
    _corrupt_copy(path, bad)
    for args in (["log", bad, "door"], ["log", bad, "door", "--json"], ["export", bad, "door"]):
        p = exe(*args)
        one_line_error(p, 1, "entry 3", "corelog audit")
        assert "LOCK" in p.stdout or '"LOCK"' in p.stdout  # the sound entries before it were shown
        assert "NOTE" not in p.stdout
    assert exe("log", bad, "counter").returncode == 0  # other logs of the store are fine
    # into a file: nothing is left behind (no partial export), and a sound log is written whole
    target = tmp_path / "out.jsonl"
    one_line_error(exe("export", bad, "door", "-o", target), 1, "entry 3")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
    assert exe("export", path, "door", "-o", target).returncode == 0
    assert target.read_text().count("\n") > 3 and not (tmp_path / "out.jsonl.partial").exists()


# --- audit --replay on a log that is not a machine ------------------------------------------------------------


def test_audit_replay_of_a_plain_log(store, tmp_path):
    path, _ = store
    one_line_error(
        exe("audit", path, "raw", "--replay", "tests.test_cli:COUNTER_IMPL", cwd=REPO), 2, "not a machine log"
    )
    mixed = tmp_path / "mixed"
    with Store(mixed, sync=False) as s:
        Machine(s.get("counter"), COUNTER, **COUNTER_IMPL).send("START", 1)
        s.get("raw").append(b"plain bytes")
    p = exe("audit", mixed, "--replay", "tests.test_cli:COUNTER_IMPL", cwd=REPO)
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and "(replayed)" not in text
    assert "2 log(s) clean; 1 replayed, 1 not a machine log (not replayed)" in text
