"""The four components of ``pryxbus demo``, each run as its own process: tui, runtime, channel manager, agent.

Each role subscribes first, prints ``ready`` on stdout (the demo starts the next process only
then), reacts to the events of one session, publishes its part of the seed's Event Flow Example,
and exits 0. Every wait is a receive with a timeout; a role that waits in vain exits 1 saying what
it missed. The agent uses the asyncio SDK, the others the sync one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sdk
import sdk.aio

TITLE = "Chat with User"
USER_TEXT = "Hello Pryx! What is on my calendar today?"
WAIT = 20.0
"""Seconds a role waits for the event it reacts to before giving up."""


class RoleFailed(Exception):
    """A role did not see what it waits for; the message says what."""


def ready(role: str) -> None:
    print(f"{role} ready", flush=True)


def wait_for(sub: sdk.Subscription, what: str, accept: Callable[[sdk.Event], bool]) -> sdk.Event:
    """The first event ``accept`` takes, within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        remaining = deadline - time.monotonic()
        try:
            event = sub.recv(timeout=max(remaining, 0.0))
        except sdk.BusTimeout:
            raise RoleFailed(f"no {what} within {WAIT:g}s") from None
        if accept(event):
            return event


def of_session(session_id: str, event_type: str, **payload: Any) -> Callable[[sdk.Event], bool]:
    def accept(event: sdk.Event) -> bool:
        if event.type != event_type or event.session_id != session_id:
            return False
        body = event.payload if isinstance(event.payload, dict) else {}
        return all(body.get(k) == v for k, v in payload.items())

    return accept


# -- tui ---------------------------------------------------------------------------------------


def tui(args: argparse.Namespace) -> None:
    """Step 1: the user types a message; then waits for the agent's answer, as a TUI would."""
    with sdk.connect(args.home, name="tui", validate=True) as bus, bus.subscribe("agent:completed") as sub:
        ready("tui")
        bus.publish(
            "channel:message",
            {"text": USER_TEXT, "channel": "tui", "sender": "user", "message_id": f"msg-{args.session[:8]}"},
            session_id=args.session,
        )
        wait_for(sub, "agent:completed (the answer)", of_session(args.session, "agent:completed"))


# -- runtime -----------------------------------------------------------------------------------


class LocalSessions:
    """Sessions kept by the runtime itself, used only when the stack has no session service.

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


def runtime(args: argparse.Namespace) -> None:
    """Steps 2 and 7: keep the session in the store, tracing each store call first.

    The runtime waits until its trace event is back from the broker before it calls the store, so
    the trace is stamped before the ``session:*`` event the store's commit causes.
    """
    patterns = ("channel:message", "agent:completed", "trace:event")
    with sdk.connect(args.home, name="runtime", validate=True) as bus, bus.subscribe(*patterns) as sub:
        store: Any = LocalSessions(bus) if args.local_sessions else bus.sessions
        ready("runtime")
        sid = args.session
        message = wait_for(sub, "channel:message from the TUI", of_session(sid, "channel:message"))

        def traced(op: str, step: int, call: Callable[[], Any], **attrs: Any) -> None:
            span = uuid.uuid4().hex[:12]
            bus.publish(
                "trace:event",
                {"name": f"sessions.{op}", "span_id": span, "attrs": {"step": step, "session_id": sid, **attrs}},
                session_id=sid,
            )
            wait_for(sub, f"the echo of trace {span}", of_session(sid, "trace:event", span_id=span))
            call()

        traced("ensure", 2, lambda: store.ensure(sid, TITLE), title=TITLE)
        done = wait_for(sub, "agent:completed", of_session(sid, "agent:completed"))
        title = f"{TITLE}: {message.payload['text'][:40]}"
        traced("rename", 7, lambda: store.rename(sid, title), title=title, agent_id=done.payload["agent_id"])


# -- channel manager ---------------------------------------------------------------------------


def channel_manager(args: argparse.Namespace) -> None:
    """Step 4: once the session exists, tell the user's channel that the agent is on it."""
    with sdk.connect(args.home, name="channel-manager", validate=True) as bus:
        with bus.subscribe("channel:message", "session:created") as sub:
            ready("channel-manager")
            sid = args.session
            message = wait_for(sub, "channel:message", of_session(sid, "channel:message"))
            created = wait_for(sub, "session:created", of_session(sid, "session:created"))
            bus.publish(
                "channel:outbound_message",
                {
                    "text": f"status: thinking (session {created.payload['id'][:8]})",
                    "channel": message.payload.get("channel", "tui"),
                    "recipient": message.payload.get("sender", "user"),
                    "reply_to": message.payload.get("message_id", ""),
                },
                session_id=sid,
            )


# -- agent (asyncio SDK) -----------------------------------------------------------------------


async def agent_main(args: argparse.Namespace) -> None:
    """Steps 5 and 6: pick the message up once its channel shows the status, answer it."""
    sid = args.session
    async with sdk.aio.connect(args.home, name="agent", validate=True) as bus:
        async with bus.subscribe("channel:*") as sub:
            ready("agent")
            text = None
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    event = await sub.recv(timeout=max(deadline - time.monotonic(), 0.0))
                except sdk.BusTimeout:
                    raise RoleFailed(f"no channel status for session {sid[:8]} within {WAIT:g}s") from None
                if event.session_id != sid:
                    continue
                if event.type == "channel:message":
                    text = event.payload["text"]
                elif event.type == "channel:outbound_message" and text is not None:
                    break
            agent_id = f"agent-{sid[:8]}"
            started = time.monotonic()
            await bus.publish(
                "agent:spawned", {"agent_id": agent_id, "task": text, "model": "demo-echo"}, session_id=sid
            )
            answer = f"You asked {len(text.split())} words; your calendar is clear today."
            await bus.publish(
                "agent:completed",
                {
                    "agent_id": agent_id,
                    "result": answer,
                    "ok": True,
                    "duration_ms": round((time.monotonic() - started) * 1000, 3),
                },
                session_id=sid,
            )


def agent(args: argparse.Namespace) -> None:
    asyncio.run(agent_main(args))


ROLES: dict[str, Callable[[argparse.Namespace], None]] = {
    "tui": tui,
    "runtime": runtime,
    "channel-manager": channel_manager,
    "agent": agent,
}


def run_role(role: str, home: Path, session: str, local_sessions: bool) -> int:
    """Run one role to its end; 0 on success, 1 with one line on stderr otherwise."""
    args = argparse.Namespace(home=home, session=session, local_sessions=local_sessions)
    try:
        ROLES[role](args)
    except (RoleFailed, sdk.BusError) as e:
        print(f"pryxbus demo: {role}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
