"""No slow-joiner loss: subscribe() returns only when live, and the first event after connect() arrives."""

from __future__ import annotations

from pathlib import Path

import sdk
from helpers import PUBLISHER, finish, python_process

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


def test_event_from_another_process_right_after_subscribe(home: Path, bus: sdk.Bus) -> None:
    proc = python_process(PUBLISH_ON_CUE, str(home), stdin=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        for n in range(10):
            # A fresh subscription each time: the cue goes out the moment subscribe() returns.
            with bus.subscribe("cue:event") as sub:
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


def test_first_event_after_connect_is_never_lost(home: Path, bus: sdk.Bus) -> None:
    with bus.subscribe("fresh:**") as sub:
        for round_ in range(5):
            finish(python_process(PUBLISHER, str(home), f"fresh{round_}", "1", f"fresh:{round_}"))
            event = sub.recv(timeout=5)
            assert (event.type, event.source, event.payload) == (f"fresh:{round_}", f"fresh{round_}", {"pub": f"fresh{round_}", "i": 0})
