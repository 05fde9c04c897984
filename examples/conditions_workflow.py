"""gamgee's ConditionsWorkflow (decide -> <<choice>> -> left | right) imported from Mermaid and run.

python examples/conditions_workflow.py
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from corelog import Store
from corelog.machine import Machine, Statechart, from_mermaid

DIAGRAM = """---
title: ConditionsWorkflow
---
stateDiagram-v2
    state choice <<choice>>
    direction LR
    [*] --> decide
    decide --> choice
    choice --> left: chooseLeft
    choice --> right: chooseRight
    left --> [*]
    right --> [*]
"""

if __name__ == "__main__":
    definition = from_mermaid(DIAGRAM)
    coin = random.Random(3).random() < 0.5  # what the `decide` step decided
    chart = Statechart(
        definition,
        guards={"chooseLeft": lambda ctx, ev: coin, "chooseRight": lambda ctx, ev: not coin},
    )
    with Store(Path(tempfile.mkdtemp()) / "store") as store:
        m = Machine(store.get("conditions"), chart)
        print(f"{definition['id']}: decide -> {m.state} (done: {m.done})")
