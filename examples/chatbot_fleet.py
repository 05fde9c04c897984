"""casern's README scenario on a corelog Fleet: thousands of chatbot conversations, one store.

Each conversation is a small durable machine (its own signed log). A periodic check times out the
ones whose person has not answered, and a listener emails support through a service. The listener
is at-least-once from a durable cursor: after a restart it resumes where it stopped, so no email
is lost (and none is sent twice after a clean stop).

    python3 examples/chatbot_fleet.py                 # a temporary store
    python3 examples/chatbot_fleet.py --store chats   # keep it; then: corelog fleet ls chats
"""

from __future__ import annotations

import argparse
import tempfile

from corelog.machine import EventNotAccepted, Fleet

PREFERENCES = {"support_person": "bob@help.com", "timeout_after": 10_000}  # ms

CONVERSATION = {
    "id": "conversation",
    "initial": "new",
    "context": {},
    "states": {
        "new": {"on": {"INQUIRY": {"target": "inquired", "actions": "remember"}}},
        "inquired": {
            "on": {
                "MSG": {"actions": "touch"},  # the person answered: the clock restarts
                "CHECK_TIMEOUT": {"target": "timeout", "guard": "expired"},
            }
        },
        "timeout": {"on": {"MSG": {"target": "inquired", "actions": "touch"}}},
    },
}

# actions and guards are pure: time comes from the event (its data or its recorded time), never a clock
IMPLEMENTATION = {
    "actions": {
        "remember": lambda ctx, ev: {"name": ev.data["name"], "when": ev.time},
        "touch": lambda ctx, ev: {"when": ev.time},
    },
    "guards": {"expired": lambda ctx, ev: ctx["when"] + PREFERENCES["timeout_after"] <= ev.data["now"]},
}


class Services:
    """What listeners may touch outside the store (here: an outbox instead of SMTP)."""

    def __init__(self) -> None:
        self.outbox: list[tuple[str, str]] = []

    def send_email(self, to: str, message: str) -> None:
        self.outbox.append((to, message))


def email_support(change, services, send):
    if change.snapshot.value == "timeout" and change.prev.value != "timeout":
        name = change.snapshot.context["name"]
        services.send_email(PREFERENCES["support_person"], f"The person {name} has not responded")


def open_fleet(path: str, services: Services, now: list[int]) -> Fleet:
    fleet = Fleet(path, services=services, clock=lambda: now[0], sync=False)
    fleet.register("conversation", CONVERSATION, **IMPLEMENTATION)
    fleet.listener("emailSupport", email_support)
    return fleet


def check_timeouts(fleet: Fleet, now: int) -> int:
    """The periodic pulse: CHECK_TIMEOUT to every open conversation; returns how many timed out."""
    waits = [fleet.post(m.id, "CHECK_TIMEOUT", {"now": now}) for m in fleet.machines(state="inquired")]
    timed_out = 0
    for wait in waits:
        try:
            timed_out += wait().value == "timeout"
        except EventNotAccepted:  # not expired yet: nothing is recorded
            pass
    return timed_out


def main(path: str) -> None:
    services, now = Services(), [1_700_000_000_000]
    with open_fleet(path, services, now) as fleet:
        waits = [fleet.post(f"conv-{i}", "INQUIRY", {"name": f"user{i}"}) for i in range(1000)]
        for wait in waits:
            wait()
        now[0] += 5_000  # 5 s later, 600 people answer
        for wait in [fleet.post(f"conv-{i}", "MSG", {"text": "hi!"}) for i in range(600)]:
            wait()
        for _ in range(2):  # the pulse, every 4 s
            now[0] += 4_000
            print(
                f"t+{(now[0] - 1_700_000_000_000) // 1000}s check: {check_timeouts(fleet, now[0])} timed out"
            )
        fleet.listeners.wait_idle()
        counts: dict = {}
        for m in fleet.machines():
            counts[m.state] = counts.get(m.state, 0) + 1
        print("states:", dict(sorted(counts.items())))
        print(f"emails sent: {len(services.outbox)}; first: {services.outbox[0]}")
        print("conv-0 history:", [e.event.type for e in fleet.history("conv-0") if e.event])
        print("conv-0 log audit ok:", fleet.log("conv-0").audit().ok)
    # restart: the listener resumes from its durable cursor; no email is sent twice
    again = Services()
    with open_fleet(path, again, now) as fleet:
        fleet.listeners.wait_idle()
        now[0] += 4_000
        print(
            f"after restart, t+{(now[0] - 1_700_000_000_000) // 1000}s check: {check_timeouts(fleet, now[0])} timed out"
        )
        fleet.listeners.wait_idle()
        print(f"emails sent after restart: {len(again.outbox)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", help="keep the fleet in this store directory (default: a temporary one)")
    args = parser.parse_args()
    if args.store:
        main(args.store)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
