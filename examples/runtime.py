"""The runtime, a role of ``pryxbus demo``: keeps the conversation's session in the store, tracing each
store call first (steps 2 and 7 of the seed's Event Flow Example).

Run it beside the other roles: ``python -m examples.runtime --home HOME --session ID``. It subscribes
first, prints ``runtime ready`` and exits 0 after renaming the session once the agent completed, or
1 with one line on stderr if what it waits for does not come within ``WAIT`` seconds. The store is
the stack's session service; with ``--local-sessions`` (a stack without one) the runtime keeps the
session itself and publishes ``session:*`` as the service would.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sdk

TITLE = "Chat with User"
WAIT = 20.0
"""Seconds to wait for each event before giving up."""


def next_event(sub: sdk.Subscription, what: str, accept: Callable[[sdk.Event], bool]) -> sdk.Event:
    """The first event ``accept`` takes, within ``WAIT`` seconds; else exit saying what is missing."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            event = sub.recv(timeout=max(deadline - time.monotonic(), 0.0))
        except sdk.BusTimeout:
            raise SystemExit(f"pryxbus demo: runtime: no {what} within {WAIT:g}s") from None
        if accept(event):
            return event


class LocalSessions:
    """Sessions kept by the runtime itself, for a stack without a session service.

    Publishes ``session:*`` after each change, as the session service does after its commits.
    """

    def __init__(self, bus: sdk.Bus) -> None:
        self._bus = bus
        self._sessions: dict[str, dict[str, str]] = {}

    def _publish(self, event_type: str, session: dict[str, str]) -> None:
        self._bus.publish(event_type, dict(session), session_id=session["id"])

    def ensure(self, session_id: str, title: str) -> None:
        now = datetime.now(timezone.utc).isoformat()
        if session_id in self._sessions:
            self._sessions[session_id]["updated_at"] = now
            self._publish("session:updated", self._sessions[session_id])
        else:
            self._sessions[session_id] = {"id": session_id, "title": title, "created_at": now, "updated_at": now}
            self._publish("session:created", self._sessions[session_id])

    def rename(self, session_id: str, title: str) -> None:
        session = self._sessions[session_id]
        session.update(title=title, updated_at=datetime.now(timezone.utc).isoformat())
        self._publish("session:updated", session)


def runtime(home: Path | None, session: str, local_sessions: bool = False) -> None:
    """Ensure the session when the user's message comes, rename it when the agent completes.

    Before each store call the runtime waits until its trace event is back from the broker, so the
    trace is stamped before the ``session:*`` event the store's commit causes.
    """

    def of_session(event_type: str, **payload: Any) -> Callable[[sdk.Event], bool]:
        def accept(event: sdk.Event) -> bool:
            body = event.payload if isinstance(event.payload, dict) else {}
            return (
                event.type == event_type
                and event.session_id == session
                and all(body.get(k) == v for k, v in payload.items())
            )

        return accept

    patterns = ("channel:message", "agent:completed", "trace:event")
    with sdk.connect(home, name="runtime", validate=True) as bus, bus.subscribe(*patterns) as sub:
        store: Any = LocalSessions(bus) if local_sessions else bus.sessions
        print("runtime ready", flush=True)
        message = next_event(sub, "channel:message from the TUI", of_session("channel:message"))

        def traced(op: str, step: int, call: Callable[[], Any], **attrs: Any) -> None:
            span = uuid.uuid4().hex[:12]
            bus.publish(
                "trace:event",
                {"name": f"sessions.{op}", "span_id": span, "attrs": {"step": step, "session_id": session, **attrs}},
                session_id=session,
            )
            next_event(sub, f"the echo of trace {span}", of_session("trace:event", span_id=span))
            call()

        traced("ensure", 2, lambda: store.ensure(session, TITLE), title=TITLE)
        done = next_event(sub, "agent:completed", of_session("agent:completed"))
        title = f"{TITLE}: {message.payload['text'][:40]}"
        traced("rename", 7, lambda: store.rename(session, title), title=title, agent_id=done.payload["agent_id"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.runtime", description="The demo's runtime.")
    parser.add_argument("--home", type=Path, default=None, help="the stack's directory (default: $PRYXBUS_HOME)")
    parser.add_argument("--session", required=True, help="the session id of the conversation")
    parser.add_argument(
        "--local-sessions", action="store_true", help="keep the session here (a stack without a session service)"
    )
    args = parser.parse_args(argv)
    try:
        runtime(args.home, args.session, args.local_sessions)
    except sdk.BusError as e:
        raise SystemExit(f"pryxbus demo: runtime: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
