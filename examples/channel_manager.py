"""A channel manager, a role of ``pryxbus demo``: once the user's message has a session, it tells the
user's channel that the agent is on it (step 4 of the seed's Event Flow Example).

Run it beside the other roles: ``python -m examples.channel_manager --home HOME --session ID``. It
subscribes first, prints ``channel-manager ready`` and exits 0 after its status message, or 1 with
one line on stderr if what it waits for does not come within ``WAIT`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sdk

WAIT = 20.0
"""Seconds to wait for each event before giving up."""


def next_event(sub: sdk.Subscription, what: str, accept: Callable[[sdk.Event], bool]) -> sdk.Event:
    """The first event ``accept`` takes, within ``WAIT`` seconds; else exit saying what is missing."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            event = sub.recv(timeout=max(deadline - time.monotonic(), 0.0))
        except sdk.BusTimeout:
            raise SystemExit(f"pryxbus demo: channel-manager: no {what} within {WAIT:g}s") from None
        if accept(event):
            return event


def channel_manager(home: Path | None, session: str) -> None:
    def of_session(event_type: str) -> Callable[[sdk.Event], bool]:
        return lambda e: e.type == event_type and e.session_id == session

    with sdk.connect(home, name="channel-manager", validate=True) as bus:
        with bus.subscribe("channel:message", "session:created") as sub:
            print("channel-manager ready", flush=True)
            message = next_event(sub, "channel:message", of_session("channel:message"))
            created = next_event(sub, "session:created", of_session("session:created"))
            bus.publish(
                "channel:outbound_message",
                {
                    "text": f"status: thinking (session {created.payload['id'][:8]})",
                    "channel": message.payload.get("channel", "tui"),
                    "recipient": message.payload.get("sender", "user"),
                    "reply_to": message.payload.get("message_id", ""),
                },
                session_id=session,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.channel_manager", description="The demo's channel manager.")
    parser.add_argument("--home", type=Path, default=None, help="the stack's directory (default: $PRYXBUS_HOME)")
    parser.add_argument("--session", required=True, help="the session id of the conversation")
    args = parser.parse_args(argv)
    try:
        channel_manager(args.home, args.session)
    except sdk.BusError as e:
        raise SystemExit(f"pryxbus demo: channel-manager: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
