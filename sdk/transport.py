"""Socket options every pryxbus socket shares: ZMTP heartbeats and reconnect backoff.

They are set once on a context (``ctx.setsockopt``), which applies them to every socket created on
it afterwards, so no hot path ever sees them. Heartbeats make a silently dead peer (a stopped
machine, a cut cable) noticed within ``HEARTBEAT_TIMEOUT``; a peer killed outright is noticed at
once by the kernel closing its connection. Reconnects start after ``RECONNECT_IVL`` and back off
to ``RECONNECT_IVL_MAX``, so a restarted broker is found again in well under two seconds.
"""

from __future__ import annotations

import zmq

HEARTBEAT_IVL = 1.0
"""Seconds between two ZMTP PINGs on an otherwise quiet connection."""
HEARTBEAT_TIMEOUT = 5.0
"""Seconds without any traffic after a PING before the connection is declared dead."""
RECONNECT_IVL = 0.1
RECONNECT_IVL_MAX = 1.0


def configure_context(ctx: zmq.Context) -> zmq.Context:
    """Set the shared options as defaults of ``ctx`` (before its sockets are created); returns it."""
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    ctx.setsockopt(zmq.HEARTBEAT_IVL, ms(HEARTBEAT_IVL))
    ctx.setsockopt(zmq.HEARTBEAT_TIMEOUT, ms(HEARTBEAT_TIMEOUT))
    ctx.setsockopt(zmq.HEARTBEAT_TTL, ms(HEARTBEAT_TIMEOUT))
    ctx.setsockopt(zmq.RECONNECT_IVL, ms(RECONNECT_IVL))
    ctx.setsockopt(zmq.RECONNECT_IVL_MAX, ms(RECONNECT_IVL_MAX))
    return ctx
