"""A Mermaid-driven workflow: a diagram, its generated typed facade, a subclass, a durable run.

    corelog gen examples/workflow/order.mmd -o examples/workflow/order_facade.py
    python examples/mermaid_workflow.py [--store DIR]

The order is paid (an event with a typed payload), the `charge` service runs
(its result is recorded as `xstate.done.actor...`), the <<choice>> picks
`shipped` or `failed` with the `accepted` guard. Every step is an entry of the
machine's log: run it again after a crash and it resumes where the log says.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow.order_facade import OrderBase  # noqa: E402

from corelog import Store  # noqa: E402
from corelog.machine import Event  # noqa: E402


class Order(OrderBase):
    def remember(self, ctx: dict[str, Any], event: Event) -> None:
        ctx["amount"], ctx["currency"] = event.data["amount"], event.data["currency"]

    def accepted(self, ctx: Mapping[str, Any], event: Event) -> bool:
        return event.data["status"] == "accepted"

    async def charge(self, input: Any, context: Mapping[str, Any], key: str) -> Any:
        await trio.sleep(0.01)  # a payment API; `key` makes a retried charge idempotent
        return {"status": "accepted" if context["amount"] < 100 else "declined", "charge": key}


async def main(store_dir: Path) -> None:
    with Store(store_dir) as store:
        order = Order()
        cm = order.coremachine(store.get("order-1"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(order.run)  # timers and services, until the machine is done
            await order.asend("PAY", {"amount": 30, "currency": "EUR"})
            async for snap in cm:
                if snap.done:
                    break
        print(cm.state, dict(cm.context))
        print([e.event.type for e in cm.history[1:]])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=None)
    args = ap.parse_args()
    trio.run(main, args.store or Path(tempfile.mkdtemp()) / "store")
