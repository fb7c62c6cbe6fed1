"""An agent on the asyncio SDK, a role of ``pryxbus demo``: picks the user's message up once its
channel shows the status, and answers it (steps 5 and 6 of the seed's Event Flow Example).

Run it beside the other roles: ``python -m examples.agent --home HOME --session ID``. It subscribes
first, prints ``agent ready`` and exits 0 after its answer, or 1 with one line on stderr if the
channel status does not come within ``WAIT`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import sdk
import sdk.aio

WAIT = 20.0
"""Seconds to wait for the channel status before giving up."""


async def agent(home: Path | None, session: str) -> None:
    async with sdk.aio.connect(home, name="agent", validate=True) as bus:
        async with bus.subscribe("channel:*") as sub:
            print("agent ready", flush=True)
            text = None
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    event = await sub.recv(timeout=max(deadline - time.monotonic(), 0.0))
                except sdk.BusTimeout:
                    raise SystemExit(
                        f"pryxbus demo: agent: no channel status for session {session[:8]} within {WAIT:g}s"
                    ) from None
                if event.session_id != session:
                    continue
                if event.type == "channel:message":
                    text = event.payload["text"]
                elif event.type == "channel:outbound_message" and text is not None:
                    break
            agent_id = f"agent-{session[:8]}"
            started = time.monotonic()
            await bus.publish(
                "agent:spawned", {"agent_id": agent_id, "task": text, "model": "demo-echo"}, session_id=session
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
                session_id=session,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.agent", description="The demo's agent (asyncio).")
    parser.add_argument("--home", type=Path, default=None, help="the stack's directory (default: $PRYXBUS_HOME)")
    parser.add_argument("--session", required=True, help="the session id of the conversation")
    args = parser.parse_args(argv)
    try:
        asyncio.run(agent(args.home, args.session))
    except sdk.BusError as e:
        raise SystemExit(f"pryxbus demo: agent: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
