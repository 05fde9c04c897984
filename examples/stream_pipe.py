"""Async stream pipes: events from a trio channel into a machine, snapshots out to a consumer.

Run: python3 examples/stream_pipe.py
"""

import tempfile

import trio

from corelog import Store
from corelog.machine import Coremachine

LIGHT = {
    "id": "light",
    "initial": "green",
    "context": {"cycles": 0},
    "states": {
        "green": {"on": {"TIMER": "yellow"}},
        "yellow": {"on": {"TIMER": "red"}},
        "red": {"on": {"TIMER": {"target": "green", "actions": "count"}}},
    },
}


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        cm = Coremachine(
            store.get("light"), LIGHT, actions={"count": lambda ctx, ev: ctx.update(cycles=ctx["cycles"] + 1)}
        )
        events_in, events_out = trio.open_memory_channel(0)
        snaps_in, snaps_out = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cm.pipe_to, snaps_in)  # snapshots -> channel
            nursery.start_soon(cm.pipe_from, events_out)  # channel -> machine

            async def producer() -> None:
                async with events_in:
                    for _ in range(6):
                        await events_in.send("TIMER")

            nursery.start_soon(producer)
            async for snapshot in snaps_out:  # the consumer
                print(f"{snapshot.value:<6} cycles={snapshot.context['cycles']}")
                if snapshot.context["cycles"] == 2:
                    await cm.aclose()  # ends pipe_to, which closes the snapshot channel
        print(f"recorded {len(cm.history)} entries; audit ok: {cm.log.audit().ok}")


trio.run(main)
