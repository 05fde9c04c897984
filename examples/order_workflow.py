"""A multi-step order workflow in flowstate's spirit: once an order is committed, it completes.

Each order is a durable machine; its steps are listeners (watchers) that call outside services and
send the next event. A listener's follow-up event commits in one transaction with its cursor, so a
step's effect inside the store happens exactly once; the outside call may repeat (at least once), so
it carries an idempotency key. The payment service is flaky (every order's first two calls fail):
the step retries with backoff and succeeds. One order meets an outage that outlasts the retries: it
is parked as a dead letter, then replayed once the service is back, and completes.

    python3 examples/order_workflow.py
"""

from __future__ import annotations

import tempfile

from corelog.machine import Fleet

ORDER = {
    "id": "order",
    "initial": "new",
    "context": {},
    "states": {
        "new": {"on": {"PLACE": {"target": "placed", "actions": "take"}}},
        "placed": {"on": {"PAID": {"target": "paid", "actions": "receipt"}, "DECLINED": "cancelled"}},
        "paid": {"on": {"SHIPPED": {"target": "shipped", "actions": "tracking"}}},
        "shipped": {"type": "final"},
        "cancelled": {"type": "final"},
    },
}
ACTIONS = {
    "take": lambda ctx, ev: {"items": ev.data["items"], "amount": ev.data["amount"]},
    "receipt": lambda ctx, ev: {"charge": ev.data["charge"]},
    "tracking": lambda ctx, ev: {"tracking": ev.data["tracking"]},
}


class PaymentService:
    """Flaky on purpose: each order's first two calls fail; ``down`` orders fail until fixed."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.charges: dict[str, int] = {}  # idempotency key -> amount: a repeated call never charges twice
        self.down: set[str] = set()

    def charge(self, key: str, amount: int) -> str:
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= 2 or key in self.down:
            raise ConnectionError(f"payment gateway timeout ({key})")
        self.charges.setdefault(key, amount)
        return f"ch_{key}"


class Services:
    def __init__(self) -> None:
        self.payments = PaymentService()
        self.shipped: list[str] = []

    def ship(self, order: str) -> str:
        if order not in self.shipped:
            self.shipped.append(order)
        return f"track-{order}"


def take_payment(change, services, send):
    if change.event.type == "PLACE":
        charge = services.payments.charge(change.id, change.snapshot.context["amount"])
        send(change.id, "PAID", {"charge": charge})  # commits with this listener's cursor


def ship(change, services, send):
    if change.event.type == "PAID":
        send(change.id, "SHIPPED", {"tracking": services.ship(change.id)})


def main(path: str) -> None:
    services = Services()
    services.payments.down.add("order-13")
    fleet = Fleet(path, services=services, sync=False)
    fleet.register("order", ORDER, ACTIONS)
    fleet.listener("payment", take_payment, max_attempts=4, backoff=0.002)
    fleet.listener("shipping", ship)
    with fleet:
        for i in range(20):
            fleet.send(f"order-{i}", "PLACE", {"items": ["book"] * (i % 3 + 1), "amount": 1200 * (i % 3 + 1)})
        print("20 orders placed")
        fleet.listeners.wait_idle()
        calls = sum(services.payments.calls.values())
        print(f"payment calls: {calls} ({calls - len(services.payments.charges)} failed and were retried)")
        print("dead letters:", [d["id"] for d in fleet.listeners.dead_letters()])
        print("states:", _states(fleet))
        services.payments.down.clear()  # the gateway is back: replay what was parked
        print("replayed:", fleet.listeners.replay("payment"))
        fleet.listeners.wait_idle()
        print("states:", _states(fleet))
        print("order-13 history:", [e.event.type for e in fleet.history("order-13") if e.event])
        print(f"charged {len(services.payments.charges)} orders once each; shipped {len(services.shipped)}")


def _states(fleet: Fleet) -> dict:
    out: dict = {}
    for m in fleet.machines(kind="order"):
        out[m.state] = out.get(m.state, 0) + 1
    return dict(sorted(out.items()))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(tmp)
