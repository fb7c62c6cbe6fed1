"""The service's ``session:*`` events, published from its own loop without ever blocking it.

The service loop hands each committed change to :meth:`SessionEvents.emit` (which encodes it at
once) and calls :meth:`SessionEvents.send_due` after each turn. Events go out at once, unless the
last ones went less than ``linger`` seconds ago: then they wait for the rest of that interval and
go together. So a lone change is announced at once, and a stream of writes wakes the broker and
its subscribers once per interval instead of once per change.

The socket is an XPUB on the service's own context, as in the SDK (DESIGN.md §4.1): it sees the
broker's subscribe-all message, and sends nothing until that has arrived, since an XPUB with no
subscriber drops what it is given. While no broker is subscribed (not started yet, restarting,
or waiting for the event log), events are held, in commit order, up to ``hold_limit``; beyond that
the oldest are dropped and counted. Sends never block: a full queue to the broker leaves the rest
held for the next turn. Sessions are durable; their events are notifications.
"""

from __future__ import annotations

import logging
import time
from collections import deque
import zmq

from schemas.endpoints import Endpoints
from schemas.envelope import DEFAULT_MAX_EVENT_SIZE
from schemas.sessions import SESSION_EVENTS
from schemas.envelope import encode_body
from sdk.wire import broker_subscribed
from sdk.security import ClientKeys, secure_client

log = logging.getLogger("pryxbus.sessions.events")

DEFAULT_LINGER = 0.010
"""Seconds a burst of session events may wait to be sent together (``--event-linger``): each
wake-up of the broker competes for the CPUs with the writes themselves (docs/performance.md)."""
HOLD_LIMIT = 10_000
"""Events held while no broker is subscribed; beyond this the oldest are dropped."""
RETRY = 0.1
"""Seconds between looks for the broker's subscription while none is there."""
OUTAGE = 1.0
"""Seconds without a broker before the service says so in its log (a connect takes a few ms)."""

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_TOPICS = {change: event_type.encode() for change, event_type in SESSION_EVENTS.items()}


class SessionEvents:
    """The event socket and the events held for it. Used only from the service loop's thread."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: Endpoints,
        *,
        name: str = "session-service",
        linger: float = DEFAULT_LINGER,
        hold_limit: int = HOLD_LIMIT,
        hwm: int = 10_000,
        curve: ClientKeys | None = None,
    ) -> None:
        self.name = name
        self.linger = linger
        self.hold_limit = hold_limit
        self.published = 0
        self.dropped = 0
        self._held: deque[tuple[bytes, bytes]] = deque()
        self._next_send = 0.0  # time.monotonic() before which held events wait
        self._subscribed = False
        self._waiting_since: float | None = None  # when the broker's subscription went missing
        self._warned = False
        sock = self._sock = ctx.socket(zmq.XPUB)  # heartbeats kept, as for the SDK's publisher
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue refuses (Again) instead of dropping
        sock.sndhwm = hwm
        sock.linger = 0  # close() decides how long queued events may take
        if curve is not None:
            secure_client(sock, curve)
        sock.connect(endpoints.publish)

    def emit(self, change: str, session: dict[str, str]) -> None:
        """Hold ``session:<change>`` (the session as payload) for :meth:`send_due`; never blocks."""
        try:
            body = encode_body(session, source=self.name, session_id=session["id"])
            if len(body) > DEFAULT_MAX_EVENT_SIZE:
                raise ValueError(f"{len(body)} bytes, over {DEFAULT_MAX_EVENT_SIZE}")
        except (TypeError, ValueError, OverflowError) as e:  # cannot happen with checked titles; counted if it ever does
            self.dropped += 1
            log.error("session event not encodable, dropped: %s", e)
            return
        held = self._held
        held.append((_TOPICS[change], body))
        if len(held) > self.hold_limit:
            held.popleft()
            self.dropped += 1

    def send_due(self, now: float) -> float | None:
        """Send the held events if their time has come (``now`` is ``time.monotonic()``).

        Returns the seconds until held events are due again, or None when none are held.
        """
        if not self._held:
            return None
        if now < self._next_send:
            return self._next_send - now
        if not self._broker_there(now):
            self._next_send = now + RETRY
            return RETRY
        self._send_held()
        self._next_send = now + self.linger
        return self.linger if self._held else None

    def close(self, timeout: float = 5.0) -> None:
        """Send what is held if a broker is there (at most ``timeout`` seconds), then close; idempotent."""
        sock = self._sock
        if sock.closed:
            return
        deadline = time.monotonic() + timeout
        if self._held and self._broker_there(time.monotonic()):
            while self._held and time.monotonic() < deadline:
                self._send_held()
                if self._held:  # the broker's queue is full: wait for room
                    sock.poll(max(1, int((deadline - time.monotonic()) * 1000)), zmq.POLLOUT)
        if self._held:
            self.dropped += len(self._held)
            log.warning("%d session event(s) not published: no broker took them before the stop", len(self._held))
            self._held.clear()
        sock.close(linger=max(0, int((deadline - time.monotonic()) * 1000)))  # queued ones may still go

    # -- internals ------------------------------------------------------------------------------

    def _broker_there(self, now: float) -> bool:
        """Whether the broker's subscription is in place: read every (un)subscription that came."""
        sock = self._sock
        if sock.getsockopt(_EVENTS) & _POLLIN:
            self._subscribed = broker_subscribed(sock)
        if self._subscribed:
            if self._warned:
                log.info("a broker subscribed after %.1fs; publishing session events", now - self._waiting_since)
            self._waiting_since, self._warned = None, False
            return True
        if self._waiting_since is None:
            self._waiting_since = now
        elif not self._warned and now - self._waiting_since > OUTAGE:
            self._warned = True
            log.warning("no broker has subscribed for %.0fs; holding session events (up to %d)", OUTAGE, self.hold_limit)
        return False

    def _send_held(self) -> None:
        held, sock = self._held, self._sock
        send = zmq.backend.Socket.send  # the compiled send, without pyzmq's Python wrapper
        while held:
            topic, body = held[0]
            try:
                send(sock, topic, _SNDMORE | _NOBLOCK)
            except zmq.Again:
                return  # the queue to the broker is full: the rest wait for the next turn
            send(sock, body)  # the rest of a multipart message never blocks
            held.popleft()
            self.published += 1

    @property
    def held(self) -> int:
        """Events waiting to be sent (for the linger, or for a broker)."""
        return len(self._held)
