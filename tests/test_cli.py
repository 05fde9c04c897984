"""The corelog CLI: every subcommand's success and error paths, replay audits, and a store corrupted on purpose.

Most runs go through click's CliRunner (fast, in-process); a few run the installed ``corelog`` executable
in a subprocess (exit codes, stderr, no traceback, a reader alongside a writer in another process).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import textwrap
from itertools import count
from pathlib import Path

import lmdb
import msgpack
import pytest
from click.testing import CliRunner

import corelog
from corelog import Store
from corelog.cli import cli, mermaid
from corelog.machine import Machine, Statechart, definition_hash

COUNTER = {
    "id": "counter",
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "actions": "start"}}},
        "running": {
            "on": {
                "INCREMENT": {"actions": "increment"},
                "STOP": {"target": "idle", "actions": "stop"},
            }
        },
    },
}


def _start(ctx, ev):
    ctx.update(running=True, counter=ev.data)


def _increment(ctx, ev):
    ctx["counter"] += 1


def _stop(ctx, ev):
    ctx["running"] = False


COUNTER_IMPL = {"actions": {"start": _start, "increment": _increment, "stop": _stop}}

# a nested machine, written entry by entry in the documented msgpack format (no runtime involved)
DOOR = {
    "id": "door",
    "initial": "closed",
    "context": {"notes": 0, "opened": 0},
    "states": {
        "closed": {
            "initial": "unlocked",
            "states": {
                "unlocked": {"on": {"LOCK": "locked", "OPEN": {"target": "#door.open", "actions": "open"}}},
                "locked": {"on": {"UNLOCK": "unlocked"}},
            },
            "on": {"NOTE": {"actions": "note"}},
        },
        "open": {"on": {"CLOSE": "closed"}},
    },
}
DOOR_IMPL = {
    "actions": {
        "open": lambda ctx, ev: ctx.update(opened=ctx["opened"] + 1),
        "note": lambda ctx, ev: ctx.update(notes=ctx["notes"] + 1),
    }
}
MARKER = "MARKER-7f3a9c-BLOCK-3"  # the distinctive bytes of block 3 only, found in data.mdb on purpose
DOOR_ENTRIES = [
    {
        "type": "corelog/machine",
        "version": 1,
        "definition": DOOR,
        "definition_hash": definition_hash(DOOR),
        "state": {"closed": "unlocked"},
        "context": {"notes": 0, "opened": 0},
        "time": 1_700_000_000_000,
    },
    {
        "event": {"type": "LOCK"},
        "state": {"closed": "locked"},
        "context": {"notes": 0, "opened": 0},
        "time": 1_700_000_001_000,
    },
    {
        "event": {"type": "UNLOCK"},
        "state": {"closed": "unlocked"},
        "context": {"notes": 0, "opened": 0},
        "time": 1_700_000_002_000,
    },
    {
        "event": {"type": "NOTE", "data": MARKER},
        "state": {"closed": "unlocked"},
        "context": {"notes": 1, "opened": 0},
        "time": 1_700_000_003_000,
    },
    {
        "event": {"type": "OPEN"},
        "state": "open",
        "context": {"notes": 1, "opened": 1},
        "time": 1_700_000_004_000,
    },
]

# parallel regions, a final state, a guard, a root-level transition and an eventless one, for diagrams
CHART = {
    "id": "job",
    "type": "parallel",
    "states": {
        "work": {
            "initial": "queued",
            "states": {
                "queued": {"on": {"RUN": [{"target": "running", "guard": "ready"}, {"target": "failed"}]}},
                "running": {"always": {"target": "done", "guard": "finished"}, "on": {"FAIL": "failed"}},
                "failed": {"on": {"RETRY": "queued"}},
                "done": {"type": "final"},
            },
        },
        "log": {"initial": "quiet", "states": {"quiet": {"on": {"VERBOSE": "loud"}}, "loud": {}}},
    },
}


def _build(path: Path) -> bytes:
    ticks = count(1_700_000_000_000, 1000)
    with Store(path, sync=False) as s:
        m = Machine(s.get("counter"), COUNTER, clock=lambda: next(ticks), **COUNTER_IMPL)
        m.send("START", 1)
        for _ in range(6):
            m.send("INCREMENT")
        m.send("STOP")
        s.get("raw").append([b"not", b"a", b"machine"])
        # written last, in one batch (one transaction): each of its blocks lives in exactly one LMDB page
        s.get("door").append([msgpack.packb(e) for e in DOOR_ENTRIES])
        return m.log.key


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "store"
    return path, _build(path)


@pytest.fixture
def built(built_once):
    return built_once


def run(*args, **kw):
    kw.setdefault("env", {"COLUMNS": "250"})  # wide enough that rich tables do not wrap cells
    result = CliRunner().invoke(cli, [str(a) for a in args], **kw)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def flat(text: str) -> str:
    """Rich wraps long lines to the terminal width; join them for substring checks."""
    return " ".join(text.split())


# --- ls and info --------------------------------------------------------------------------------------


def test_ls_lists_every_log(built):
    path, key = built
    code, out = run("ls", path)
    assert code == 0, out
    assert "counter" in out and "raw" in out and "door" in out and key.hex()[:16] in out
    row = next(line for line in out.splitlines() if " counter " in line)
    assert " 9 " in row and " yes " in row  # length 9 (header + 8 events), writable


def test_ls_of_an_empty_store(tmp_path):
    Store(tmp_path / "empty").close()
    code, out = run("ls", tmp_path / "empty")
    assert code == 0 and "logs in" in out


def test_info_by_name_key_and_prefix(built):
    path, key = built
    with Store(path, readonly=True) as s:
        head = s.get("counter").head()
        dkey = s.get("counter").discovery_key
    for spec in ("counter", key.hex(), key.hex()[:8], key.hex()[:20].upper()):
        code, out = run("info", path, spec)
        text = out.replace("\n", "").replace(" ", "")
        assert code == 0, out
        assert key.hex() in text and dkey.hex() in text
        assert head.tree_hash.hex() in text and head.encoded_signature.hex() in text
        assert "machineid" in text and "definitionhash" in text and definition_hash(COUNTER) in text
    code, out = run("info", path, "raw")
    assert code == 0 and "not a machine log" in flat(out)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuch", "no log named 'nosuch'"),
        ("0" * 64, "no log with key " + "0" * 64),
        ("0" * 66, "a key is 64 hex digits"),
        ("abcd", "a key prefix needs at least 8 hex digits"),
        ("deadbeefdeadbeef", "no key starting with it"),
    ],
)
def test_info_unknown_log_or_bad_key_exits_2(built, spec, message):
    path, _ = built
    code, out = run("info", path, spec)
    assert code == 2 and message in flat(out)


def test_ambiguous_prefix_exits_2(tmp_path):
    common = bytes.fromhex("c0ffee00c0ffee")
    with Store(tmp_path / "s", sync=False) as s:
        for tail in (b"\x01", b"\x02"):  # two replicas whose keys share 14 hex digits
            s.get(key=common + tail + bytes(32 - len(common) - 1))
    code, out = run("info", tmp_path / "s", common.hex()[:8])
    assert code == 2 and "key prefix 'c0ffee00' is ambiguous: 2 logs match" in flat(out)
    code, out = run("info", tmp_path / "s", common.hex() + "01")  # unique once long enough
    assert code == 0 and "replica" in out


# --- log ------------------------------------------------------------------------------------------------


def test_log_table(built):
    path, _ = built
    code, out = run("log", path, "counter")
    text = flat(out)
    assert code == 0, out
    assert "(header)" in text and "START" in text and "INCREMENT" in text and "STOP" in text
    assert "counter=1, running=true" in text and "counter=2" in text and "running=false" in text
    assert "2023-11-14 22:13:21.000" in text  # entry 1's time, UTC
    code, out = run("log", path, "counter", "--from", "3", "--to", "5")
    text = flat(out)
    assert code == 0 and "entries 3..4 of 9" in text and "counter=3" in text and "START" not in text


def test_log_json_lines(built):
    path, _ = built
    code, out = run("log", path, "counter", "--json", "--from", "1", "--to", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["index"] for r in rows] == [1, 2]
    assert rows[0]["event"] == {"type": "START", "data": 1} and rows[0]["state"] == "running"
    assert rows[1]["context"] == {"running": True, "counter": 2}


def test_log_reads_entries_written_directly_in_the_documented_format(built):
    path, _ = built
    code, out = run("log", path, "door", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == len(DOOR_ENTRIES)
    assert rows[0]["kind"] == "header" and rows[0]["definition_hash"] == definition_hash(DOOR)
    for row, written in zip(rows[1:], DOOR_ENTRIES[1:], strict=True):
        assert row["event"] == written["event"]
        assert (row["state"], row["context"], row["time"]) == (
            written["state"],
            written["context"],
            written["time"],
        )
    code, out = run("log", path, "door")
    text = flat(out)
    assert code == 0 and '{"closed": "locked"}' in text and "opened=1" in text and "(unchanged)" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "9"], "nothing in --from 9"),
        (["--from", "5", "--to", "5"], "nothing in --from 5"),
        (["--from", "-1"], "Invalid value for '--from'"),
    ],
)
def test_log_bad_ranges_exit_2(built, args, message):
    path, _ = built
    code, out = run("log", path, "counter", *args)
    assert code == 2 and message in flat(out)


# --- export ---------------------------------------------------------------------------------------------


def test_export_jsonl_and_csv(built, tmp_path):
    path, _ = built
    code, out = run("export", path, "counter", "--format", "jsonl")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 9 and rows[-1]["event"] == {"type": "STOP"}
    target = tmp_path / "out.csv"
    code, out = run("export", path, "counter", "--format", "csv", "-o", target)
    assert code == 0 and out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["event"] for r in rows[:3]] == ["", "START", "INCREMENT"]
    assert rows[1]["data"] == "1" and rows[-1]["state"] == "idle"
    assert json.loads(rows[-1]["context"]) == {"running": False, "counter": 7}
    code, out = run("export", path, "door", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and json.loads(rows[1]["state"]) == {"closed": "locked"}


def test_export_bad_format_exits_2(built):
    path, _ = built
    code, out = run("export", path, "counter", "--format", "xml")
    assert code == 2 and "Invalid value for '--format'" in out


# --- diagram --------------------------------------------------------------------------------------------


def test_diagram_of_a_stored_machine(built):
    path, _ = built
    code, out = run("diagram", path, "counter")
    lines = [line.strip() for line in out.splitlines()]
    assert code == 0 and "stateDiagram-v2" in lines
    assert "[*] --> idle" in lines and "idle --> running : START / start" in lines
    assert (
        "running --> running : INCREMENT / increment" in lines and "running --> idle : STOP / stop" in lines
    )
    assert "class idle current" in lines and any(line.startswith("classDef current") for line in lines)
    code, out = run("diagram", path, "door")  # nested, current state "open"
    lines = [line.strip() for line in out.splitlines()]
    assert "state closed {" in lines and "[*] --> unlocked" in lines
    assert any(x.startswith("unlocked --> open : OPEN") for x in lines)
    assert any(x.startswith("closed --> closed : NOTE") for x in lines)
    assert "class open current" in lines


def test_mermaid_parallel_final_guard_always_and_root_transitions():
    out = mermaid(CHART, {"work": "running", "log": "loud"})
    lines = [line.strip() for line in out.splitlines()]
    assert 'state "job" as root_job {' in lines and "[*] --> root_job" in lines  # a parallel root is a box
    assert "--" in lines  # the region separator
    assert "queued --> running : RUN [ready]" in lines and "queued --> failed : RUN" in lines
    assert "running --> done : always [finished]" in lines and "done --> [*]" in lines
    assert "class running current" in lines and "class loud current" in lines
    assert "class work current" not in lines  # only the active atomic states are marked
    # a transition is declared inside the innermost composite holding both its ends
    inner = out.index("state work {"), out.index("state log {")
    assert inner[0] < out.index("failed --> queued : RETRY") < inner[1]
    # root-level transitions start from the machine's box
    rooted = mermaid({**COUNTER, "on": {"RESET": ".idle"}}, "running")
    assert "root_counter --> idle : RESET" in [line.strip() for line in rooted.splitlines()]
    assert mermaid(COUNTER).count("class ") == 0  # nothing marked without a current state


# --- commands that need a machine log refuse a plain one; every command reports missing stores/logs ------


@pytest.mark.parametrize("command", ["log", "export", "diagram"])
def test_machine_commands_refuse_a_plain_log(built, command):
    path, _ = built
    code, out = run(command, path, "raw")
    assert code == 2 and "not a machine log" in out


@pytest.mark.parametrize("command", ["ls", "info", "key", "log", "audit", "export", "diagram"])
def test_every_subcommand_reports_a_missing_store_and_an_unknown_log(built, tmp_path, command):
    path, _ = built
    needs_log = command not in ("ls", "audit")
    code, out = run(command, tmp_path / "missing", *(["counter"] if needs_log else []))
    assert code == 2 and "no corelog store at" in flat(out)
    if command != "ls":
        code, out = run(command, path, "no-such-log")
        assert code == 2 and "no log named 'no-such-log'" in flat(out)


def test_a_damaged_store_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.mdb").write_bytes(b"this is not an LMDB file" * 200)
    code, out = run("ls", tmp_path / "bad")
    assert code == 2 and "cannot open the store" in flat(out)


def test_unexpected_errors_are_one_line_unless_debug(built, monkeypatch):
    path, _ = built

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(corelog.Log, "head", boom)
    code, out = run("info", path, "counter")
    assert code == 1
    assert "unexpected RuntimeError: disk on fire (run with --debug for the traceback)" in flat(out)
    result = CliRunner().invoke(cli, ["--debug", "info", str(path), "counter"])
    assert isinstance(result.exception, RuntimeError)  # --debug lets it through: click prints the traceback


def test_debug_shows_the_traceback_of_a_user_error_too(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "audit", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no corelog store" in result.output


# --- audit ----------------------------------------------------------------------------------------------


def test_audit_clean(built):
    path, _ = built
    code, out = run("audit", path)
    assert code == 0 and "3 log(s) clean" in out
    code, out = run("audit", path, "counter")
    assert code == 0 and "1 log(s) clean" in out


def _write_module(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name


@pytest.fixture
def impl_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_audit_replay_with_the_right_implementation(built, impl_dir):
    path, _ = built
    code, out = run("audit", path, "counter", "--replay", "tests.test_cli:COUNTER_IMPL")
    assert code == 0 and "1 log(s) clean; 1 replayed" in out
    code, out = run("audit", path, "door", "--replay", "tests.test_cli:DOOR_IMPL")
    assert code == 0, out  # hand-written entries replay through the interpreter too
    _write_module(
        impl_dir,
        "impl_forms",
        """
        from corelog.machine import Statechart
        from tests.test_cli import COUNTER, COUNTER_IMPL
        CHART = Statechart(COUNTER, **COUNTER_IMPL)
        def build(definition):
            return Statechart(definition, **COUNTER_IMPL)
        """,
    )
    for attr in ("CHART", "build"):
        code, out = run("audit", path, "counter", "--replay", f"impl_forms:{attr}")
        assert code == 0, out
    # every machine log of the store at once: a plain log is reported as such, not as a problem
    code, out = run("audit", path, "--replay", "tests.test_cli:COUNTER_IMPL")
    assert code == 1 and "counter" in out and "not a machine log" in flat(out)  # door needs DOOR_IMPL


def test_audit_replay_reports_the_first_differing_entry(built, impl_dir):
    path, _ = built
    _write_module(
        impl_dir,
        "wrong_impl",
        """
        from tests.test_cli import COUNTER_IMPL
        def increment_twice(ctx, ev):
            ctx["counter"] += 2
        IMPL = {"actions": {**COUNTER_IMPL["actions"], "increment": increment_twice}}
        """,
    )
    code, out = run("audit", path, "counter", "--replay", "wrong_impl:IMPL")
    text = flat(out)
    assert code == 1, out
    assert "first bad index 2" in text and "entry 2 (INCREMENT)" in text  # entry 1 (START) still agrees
    assert '"counter": 2' in text and '"counter": 3' in text  # recorded vs replayed


def test_audit_replay_of_a_migrated_log_resets_the_chart_at_each_header(tmp_path):
    v2 = {**COUNTER, "states": {**COUNTER["states"], "paused": {"on": {"RESUME": "running"}}}}
    v2["states"]["running"] = {"on": {**COUNTER["states"]["running"]["on"], "PAUSE": "paused"}}
    with Store(tmp_path / "s", sync=False) as s:
        m = Machine(s.get("m"), COUNTER, **COUNTER_IMPL)
        m.send("START", 5)
        m.close()
        m = Machine(s.get("m"), v2, migrate=True, **COUNTER_IMPL)
        m.send("PAUSE")
        m.send("RESUME")
        m.send("INCREMENT")
        m.close()
    code, out = run("audit", tmp_path / "s", "m", "--replay", "tests.test_cli:COUNTER_IMPL")
    assert code == 0, out
    # a chart that always builds v1 fails at the migration header
    code, out = run("audit", tmp_path / "s", "m", "--replay", "tests.test_cli:V1_CHART")
    assert code == 1 and "entry 2 (header)" in flat(out) and "definition hash" in flat(out)


V1_CHART = Statechart(COUNTER, **COUNTER_IMPL)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nocolon", "--replay takes MODULE:ATTR"),
        ("no_such_module_xyz:IMPL", "cannot load no_such_module_xyz:IMPL"),
        ("tests.test_cli:NOPE", "cannot load tests.test_cli:NOPE"),
        ("tests.test_cli:MARKER", "is a str"),
        ("tests.test_cli:DOOR_ENTRIES", "is a list"),
    ],
)
def test_audit_replay_usage_errors_exit_2(built, spec, message):
    path, _ = built
    code, out = run("audit", path, "counter", "--replay", spec)
    assert code == 2 and message in flat(out)


def _corrupt_copy(src: Path, dst: Path) -> None:
    """A copy of the store with one byte of block 3 of "door" (the MARKER block) flipped inside data.mdb.

    The copy is compacted first: LMDB's copy-on-write leaves stale copies of rewritten pages in the file,
    and flipping a byte of one of those would change nothing the store reads.
    """
    env = lmdb.open(str(src), readonly=True, lock=False, max_dbs=16)
    dst.mkdir()
    env.copy(str(dst), compact=True)
    env.close()
    data = bytearray((dst / "data.mdb").read_bytes())
    pos = data.find(MARKER.encode())
    assert pos > 0 and data.count(MARKER.encode()) == 1  # exactly one live copy: block 3's event data
    data[pos + 3] ^= 0x01
    (dst / "data.mdb").write_bytes(bytes(data))


def test_audit_names_the_log_and_index_of_a_flipped_byte(built, tmp_path):
    path, _ = built
    bad = tmp_path / "corrupt"
    _corrupt_copy(path, bad)
    code, out = run("audit", bad)
    text = flat(out)
    assert code == 1, out
    assert "log door (" in text and "first bad index 3" in text and "block 3" in text
    code, out = run("audit", bad, "counter")  # the other logs are untouched
    assert code == 0
    code, out = run("audit", bad, "door", "--replay", "tests.test_cli:DOOR_IMPL")
    assert code == 1 and "skipped (log damaged)" in flat(out)


# --- the real executable ----------------------------------------------------------------------------------

EXE = shutil.which("corelog")
REPO = Path(__file__).resolve().parent.parent
# the executable imports this checkout even if the editable install points at another clone
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def corelog_exe(*args, **kw):
    assert EXE, "the console script is installed by pip install -e ."
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=60, env=ENV, **kw)


def test_executable_exit_codes_and_no_traceback(built, tmp_path):
    path, _ = built
    p = corelog_exe("ls", path)
    assert p.returncode == 0 and "counter" in p.stdout
    p = corelog_exe("audit", tmp_path / "nowhere")
    assert p.returncode == 2 and "no corelog store" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "corrupt"
    _corrupt_copy(path, bad)
    p = corelog_exe("audit", bad)
    assert p.returncode == 1 and "Traceback" not in p.stderr + p.stdout
    assert "log door (" in flat(p.stdout) and "first bad index 3" in flat(p.stdout)
    p = corelog_exe("--version")
    assert p.returncode == 0 and "0.1.0" in p.stdout


def test_executable_reads_alongside_a_writer_in_another_process(tmp_path):
    path = tmp_path / "live"
    with Store(path, sync=False) as s:  # this process holds the store open for writing
        m = Machine(s.get("counter"), COUNTER, **COUNTER_IMPL)
        m.send("START", 1)
        p = corelog_exe("audit", path)
        assert p.returncode == 0, p.stderr
        m.send("INCREMENT")
        p = corelog_exe("log", path, "counter", "--json")
        assert p.returncode == 0 and len(p.stdout.splitlines()) == 3


def test_executable_exits_quietly_when_the_reader_of_its_output_leaves(tmp_path):
    with Store(tmp_path / "s", sync=False) as s:
        header = {**DOOR_ENTRIES[0], "definition": COUNTER, "definition_hash": definition_hash(COUNTER)}
        step = {"event": {"type": "INCREMENT"}, "state": "running", "context": {"pad": "x" * 200}, "time": 1}
        s.get("big").append([msgpack.packb(header)] + [msgpack.packb(step)] * 2000)  # ~500 KB of JSON lines
    proc = subprocess.Popen(
        [EXE, "export", str(tmp_path / "s"), "big"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    assert proc.stdout.readline().startswith(b'{"index": 0')
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "unexpected" not in err


def test_serve_and_sync_between_processes(built, tmp_path):
    path, key = built
    server = subprocess.Popen(
        [EXE, "serve", str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        line = server.stdout.readline()
        assert line, server.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        p = corelog_exe("sync", tmp_path / "mirror", key.hex(), f"127.0.0.1:{port}")
        assert p.returncode == 0, p.stderr
        assert "9 entries" in p.stdout and "audit ok" in p.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)
    p = corelog_exe("audit", tmp_path / "mirror", key.hex()[:12])  # a replica, found by key prefix
    assert p.returncode == 0, p.stdout + p.stderr


def test_sync_usage_errors(built, tmp_path):
    path, key = built
    code, out = run("sync", tmp_path / "mirror", "zz", "127.0.0.1:1")
    assert code == 2 and "64 hex digits" in out
    code, out = run("sync", tmp_path / "mirror", key.hex(), "no-port")
    assert code == 2 and "HOST:PORT" in out
    code, out = run("sync", tmp_path / "mirror", key.hex(), "127.0.0.1:1")
    assert code == 2 and "cannot connect" in out
