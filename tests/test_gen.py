"""``corelog gen``: the typed facade module, used at run time and checked by mypy."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from corelog.cli import cli
from corelog.machine import Machine, from_mermaid
from corelog.machine._gen import generate

HERE = Path(__file__).parent
DIAGRAM = HERE / "vectors" / "order_flow.mmd"
REPO = HERE.parent

USER = """
from collections.abc import Mapping
from typing import Any

from corelog.machine import Event
from order_gen import OrderFlowBase


class Order(OrderFlowBase):
    def remember(self, ctx: dict[str, Any], event: Event) -> None:
        ctx["amount"] = event.data["amount"]

    def approved(self, ctx: Mapping[str, Any], event: Event) -> bool:
        return bool(event.data)

    async def authorize(self, input: Any, context: Mapping[str, Any], key: str) -> Any:
        return True


def use(o: Order) -> None:
    o.send("PAY", {"amount": 3, "currency": "EUR"})
    o.send("RETRY")
    o.send("PAYY", {"amount": 3, "currency": "EUR"})  # line 23: unknown event name
    o.send("PAY", {"amount": "3", "currency": "EUR"})  # line 24: wrong payload type
"""


def gen_module(tmp_path: Path) -> Path:
    out = tmp_path / "order_gen.py"
    result = CliRunner().invoke(cli, ["gen", str(DIAGRAM), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_generated_facade_runs_a_machine(tmp_path, store):
    gen = load(gen_module(tmp_path), "order_gen")
    assert gen.DEFINITION == from_mermaid(DIAGRAM.read_text())
    assert gen.EventType.__args__ == ("PAY", "RETRY")
    with pytest.raises(TypeError, match="abstract"):
        gen.OrderFlowBase()

    class Order(gen.OrderFlowBase):
        def remember(self, ctx, event):
            ctx["amount"] = event.data["amount"]

        def approved(self, ctx, event):
            return event.data == "ok"

        async def authorize(self, input, context, key):
            return "ok"

    order = Order()
    m = order.machine(store.get("order"))
    assert isinstance(m, Machine) and order.snapshot.value == "cart"
    s = order.send("PAY", {"amount": 12, "currency": "EUR"})
    assert s.value == "checking" and s.context["amount"] == 12
    assert list(s.invocations) == ["0.order-flow.checking"]
    s = m.send("xstate.done.actor.0.order-flow.checking", "ok")  # the outcome, as a scheduler records it
    assert s.value == "paid" and s.done
    assert set(order.services()) == {"authorize"}


def test_regenerating_gives_the_same_module(tmp_path):
    first = gen_module(tmp_path).read_text()
    assert generate(from_mermaid(DIAGRAM.read_text()), DIAGRAM.name) == first
    compile(first, "order_gen.py", "exec")


def test_mypy_catches_a_wrong_event_name_and_payload(tmp_path):
    gen_module(tmp_path)
    (tmp_path / "user.py").write_text(USER)
    env = {**os.environ, "MYPYPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--follow-imports=silent",
            "user.py",
            "order_gen.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [e.split(":")[:2] for e in errors] == [["user.py", "23"], ["user.py", "24"]], proc.stdout
    assert all("No overload variant" in e for e in errors)


def test_gen_from_json_and_bad_input(tmp_path):
    d = {
        "id": "door",
        "initial": "shut",
        "states": {
            "shut": {"on": {"OPEN": {"target": "open", "guard": "if"}}},
            "open": {"after": {"LATER": "shut"}},
        },
    }
    src = tmp_path / "door.json"
    src.write_text(json.dumps(d))
    result = CliRunner().invoke(cli, ["gen", str(src)])
    assert result.exit_code == 0
    assert "class DoorBase(abc.ABC):" in result.output
    assert "def if_(self, ctx" in result.output and "def LATER(self, ctx" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**d, "meta": {"payloads": {"NOPE": {"x": "int"}}}}))
    result = CliRunner().invoke(cli, ["gen", str(bad)])
    assert result.exit_code == 2 and "no transition takes event 'NOPE'" in result.output
    mmd = tmp_path / "x.mmd"
    mmd.write_text("stateDiagram-v2\n  a --> b : two words\n")
    result = CliRunner().invoke(cli, ["gen", str(mmd)])
    assert result.exit_code == 2 and "line 2" in result.output


def test_the_example_facade_is_what_gen_writes():
    example = REPO / "examples" / "workflow"
    expected = generate(from_mermaid((example / "order.mmd").read_text()), "order.mmd")
    assert (example / "order_facade.py").read_text() == expected, (
        "run: corelog gen examples/workflow/order.mmd -o examples/workflow/order_facade.py"
    )
