"""No slow-joiner loss: subscribe() returns only when live, and the first event after connect() arrives."""

from __future__ import annotations

from pathlib import Path

import sdk
from helpers import finish, python_process
from tests.fronts import Front

# Waits for one line on stdin before publishing, so the test decides when "after subscribe" is.
PUBLISH_ON_CUE = """
import sys, sdk
with sdk.connect(sys.argv[1], name="cue") as bus:
    bus.publish("warm:up", None)  # connect the publisher before the cue
    print("ready", flush=True)
    for line in sys.stdin:
        bus.publish("cue:event", {"n": int(line)})
        print("sent", flush=True)
"""


def test_event_from_another_process_right_after_subscribe(home: Path, front_bus: sdk.Bus) -> None:
    proc = python_process(PUBLISH_ON_CUE, str(home), stdin=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        for n in range(10):
            # A fresh subscription each time: the cue goes out the moment subscribe() returns.
            with front_bus.subscribe("cue:event") as sub:
                proc.stdin.write(f"{n}\n")
                proc.stdin.flush()
                event = sub.recv(timeout=5)
            assert (event.type, event.payload) == ("cue:event", {"n": n})
            assert proc.stdout.readline() == "sent\n"
        finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_first_event_after_connect_is_never_lost(home: Path, front_bus: sdk.Bus, front: Front) -> None:
    """Each round a new bus (its own context, so a new connection to the broker) publishes once."""
    with front_bus.subscribe("fresh:**") as sub:
        for round_ in range(5):
            with front.connect(home, name=f"fresh{round_}") as publisher:
                publisher.publish(f"fresh:{round_}", {"i": 0})
            event = sub.recv(timeout=5)
            assert (event.type, event.source, event.payload) == (f"fresh:{round_}", f"fresh{round_}", {"i": 0})
