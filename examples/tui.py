"""A TUI-like sender, the first role of ``pryxbus demo``: publishes the user's message (step 1 of the
seed's Event Flow Example), then waits for the agent's answer, as a TUI would.

Run it beside the other roles: ``python -m examples.tui --home HOME --session ID``. It subscribes
first, prints ``tui ready`` (the demo starts the next process only then) and exits 0 once answered,
or 1 with one line on stderr if no answer comes within ``WAIT`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sdk

USER_TEXT = "Hello Pryx! What is on my calendar today?"
WAIT = 20.0
"""Seconds to wait for the answer before giving up."""


def next_event(sub: sdk.Subscription, what: str, accept: Callable[[sdk.Event], bool]) -> sdk.Event:
    """The first event ``accept`` takes, within ``WAIT`` seconds; else exit saying what is missing."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            event = sub.recv(timeout=max(deadline - time.monotonic(), 0.0))
        except sdk.BusTimeout:
            raise SystemExit(f"pryxbus demo: tui: no {what} within {WAIT:g}s") from None
        if accept(event):
            return event


def tui(home: Path | None, session: str) -> None:
    with sdk.connect(home, name="tui", validate=True) as bus, bus.subscribe("agent:completed") as sub:
        print("tui ready", flush=True)
        bus.publish(
            "channel:message",
            {"text": USER_TEXT, "channel": "tui", "sender": "user", "message_id": f"msg-{session[:8]}"},
            session_id=session,
        )
        next_event(sub, "agent:completed (the answer)", lambda e: e.session_id == session)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.tui", description="The demo's TUI-like sender.")
    parser.add_argument("--home", type=Path, default=None, help="the stack's directory (default: $PRYXBUS_HOME)")
    parser.add_argument("--session", required=True, help="the session id of the conversation")
    args = parser.parse_args(argv)
    try:
        tui(args.home, args.session)
    except sdk.BusError as e:
        raise SystemExit(f"pryxbus demo: tui: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
