"""Socket options every pryxbus socket shares: dead-peer detection and reconnect backoff.

They are set once on a context (``ctx.setsockopt``), which applies them to every socket created on
it afterwards, so no hot path ever sees them. ZMTP heartbeats make a silently dead peer (a stopped
machine, a cut cable) noticed within ``HEARTBEAT_TIMEOUT``; a peer killed outright is noticed at
once by the kernel closing its connection. Reconnects start after ``RECONNECT_IVL`` and back off
to ``RECONNECT_IVL_MAX``, so a restarted broker is found again in well under two seconds.

Sockets that receive events (the broker's two event sockets, subscribers, the event log) use TCP
keepalive instead of ZMTP heartbeats (:func:`event_socket`): libzmq 4.3 cannot heartbeat a
connection whose reader is behind. When a receive queue is full the engine stops reading its
connection, so it sees no PING or PONG, the heartbeat times out, the connection is dropped (losing
what was in flight on it), and when the reader catches up libzmq aborts the whole process with
``Assertion failed: _input_stopped (stream_engine_base.cpp:396)`` (zeromq/libzmq#3937, #4767). A
subscriber that had stopped reading for 5 s with a full queue crashed that way. Keepalive probes
are answered by the peer's kernel, whether or not its program reads, but the kernel only probes a
connection with nothing to send. Publishers (the SDK's, the session service's) therefore keep
their heartbeats: their receive queue (subscriptions) never fills, and across a cut network a
publisher with events still to send would otherwise retransmit into a connection the broker had
already dropped, for minutes, while ``publish`` kept returning (seen across two network
namespaces). With the heartbeat it drops the connection within HEARTBEAT_TIMEOUT, and ``publish``
then waits for the broker (and times out) as for any broker outage.
"""

from __future__ import annotations

import zmq

from schemas.endpoints import Endpoints

HEARTBEAT_IVL = 1.0
"""Seconds between two ZMTP PINGs on an otherwise quiet connection."""
HEARTBEAT_TIMEOUT = 5.0
"""Seconds without any traffic after a PING before the connection is declared dead."""
RECONNECT_IVL = 0.1
RECONNECT_IVL_MAX = 1.0
CONNECT_TIMEOUT = 2.0
"""Seconds a tcp connect may take before it is abandoned and tried again (after RECONNECT_IVL):
without it the kernel's own SYN backoff left subscribers unconnected for 16 s after a 30 s network
cut had ended."""
KEEPALIVE_IDLE = 5
"""Seconds of silence on an event connection (tcp) before the kernel starts probing the peer."""
KEEPALIVE_INTVL = 1
KEEPALIVE_CNT = 5
"""Unanswered probes, KEEPALIVE_INTVL seconds apart, after which the connection is dropped."""


def configure_context(ctx: zmq.Context, endpoints: Endpoints | None = None) -> zmq.Context:
    """Set the shared options as defaults of ``ctx`` (before its sockets are created); returns it.

    With ``endpoints`` on an IPv6 address, its sockets get ``IPV6`` too. Not for every context:
    with ``IPV6`` on, ZeroMQ resolves ``localhost`` to ``::1`` first, where a stack bound on
    127.0.0.1 is not.
    """
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    if endpoints is not None and endpoints.ipv6:
        ctx.setsockopt(zmq.IPV6, 1)
    ctx.setsockopt(zmq.HEARTBEAT_IVL, ms(HEARTBEAT_IVL))
    ctx.setsockopt(zmq.HEARTBEAT_TIMEOUT, ms(HEARTBEAT_TIMEOUT))
    ctx.setsockopt(zmq.HEARTBEAT_TTL, ms(HEARTBEAT_TIMEOUT))
    ctx.setsockopt(zmq.RECONNECT_IVL, ms(RECONNECT_IVL))
    ctx.setsockopt(zmq.RECONNECT_IVL_MAX, ms(RECONNECT_IVL_MAX))
    ctx.setsockopt(zmq.CONNECT_TIMEOUT, ms(CONNECT_TIMEOUT))
    return ctx


def event_socket(sock: zmq.Socket) -> zmq.Socket:
    """``sock``, which carries events, without ZMTP heartbeats and with TCP keepalive (see above);
    before it binds or connects (a bind's listener copies the options it has then). Returns it."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 0)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 0)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
    return sock
