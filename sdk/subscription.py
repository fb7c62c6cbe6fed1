"""A live subscription, sync front: one blocking SUB socket driving the core in :mod:`sdk.core`.

The decoding, the sequences and every cold path (handshake, seam, gap fill, catch-up, restart
looks) live in the core; this module only receives frames and performs the steps its flows ask for.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq

from schemas.envelope import SESSION_PREFIX
from sdk.core.decoding import POLICIES, EventDecoder, Policy, Resolve, unwrap
from sdk.core.subscribing import decoder_for
from sdk.core.flows import PAGE, Filter, Receive, drive, sync_token
from sdk.core.subscribing import Counters, handshake, seam
from sdk.errors import BusClosed, BusTimeout, SlowSubscriberError
from sdk.event import Event
from sdk.filters import Predicate, pending_queue
from sdk.transport import event_socket

if TYPE_CHECKING:
    from sdk.bus import Bus

__all__ = ["POLICIES", "EventDecoder", "Policy", "Subscription", "deadline_of"]

_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)

_SLICE_MS = 100  # how often a blocked receive looks whether the subscription was closed
_DRAIN = 256  # messages decoded per turn of recv(): one lock and one deadline for all of them


def deadline_of(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` at which a wait of ``timeout`` seconds ends; None (wait for ever) for
    None or infinity. A negative timeout has already ended.

    Raises:
        ValueError: ``timeout`` is NaN.
    """
    if timeout is None or timeout == math.inf:
        return None
    if timeout != timeout:
        raise ValueError("timeout must be a number of seconds or None, not NaN")
    return time.monotonic() + timeout


class Subscription(Counters):
    """Events matching some patterns, in version order. Create with ``Bus.subscribe``.

    Iterate it, or call ``recv(timeout=)``. Closing it (or its Bus) ends iteration.
    """

    def __init__(
        self,
        bus: Bus,
        patterns: tuple[str, ...],
        *,
        policy: Policy = "drop",
        hwm: int,
        timeout: float,
        since: int | None = None,
        seam_timeout: float | None = None,
        keep: Predicate | None = None,
        session_id: str | None = None,
    ) -> None:
        self.patterns = patterns
        self._pending: deque[Event] = pending_queue(keep)
        self._enough = 0  # while recv_many waits: the events it takes (a drain stops there)
        self._decoder: EventDecoder = decoder_for(
            patterns, policy, since=since, timeout=bus.timeout, page=min(PAGE, max(hwm, 1000)),
            session_id=session_id,
        )
        self._bus = bus
        self._lock = threading.Lock()
        self._closed = False
        self._failed: SlowSubscriberError | None = None
        sock = event_socket(bus._ctx.socket(zmq.SUB))
        sock.linger = 0
        sock.rcvhwm = hwm
        self._sock = sock
        try:
            sock.connect(bus.endpoints.subscribe)
            sock.sndhwm = 0  # no limit: a SUB sends only subscriptions, and one dropped is never sent again
            for prefix in self._decoder.prefixes:
                sock.subscribe(prefix)
            token = sync_token()
            sock.subscribe(token)
            self._run(
                handshake(self._decoder, self._pending, token, endpoint=bus.endpoints.subscribe, timeout=timeout)
            )
            sock.unsubscribe(token)
            if since is not None:
                self._run(seam(self._decoder, self._pending, patterns, since, timeout=seam_timeout or timeout))
        except BaseException:
            sock.close(linger=0)
            raise

    def _run(self, flow: Resolve) -> None:
        drive(flow, self._server, self._io)

    def _server(self, name: str) -> Any:
        """The requester of a server a core flow asks (the bus's)."""
        return self._bus.control if name == "control" else self._bus.log

    def _io(self, step: Receive | Filter) -> list[bytes] | None:
        """A core flow's Receive (the next message's frames, or None at its deadline) or Filter."""
        if type(step) is Filter:
            if not self._sock.closed:
                self._sock.setsockopt(zmq.SUBSCRIBE if step.on else zmq.UNSUBSCRIBE, step.prefix)
            return None
        remaining = step.deadline - time.monotonic()
        if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1, _POLLIN):
            return None
        return unwrap(self._decoder.head, self._sock.recv_multipart())

    # -- receiving ---------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Event:
        """The next matching event.

        Args:
            timeout: seconds to wait; None waits until an event arrives or the subscription closes.

        Raises:
            BusTimeout: nothing arrived in time (also a ``TimeoutError``).
            SlowSubscriberError: events were lost and the policy is ``"drop"``; the subscription is over.
            BusClosed: the subscription or its bus was closed.
        """
        pending = self._pending
        if pending:
            return pending.popleft()
        with self._lock:
            if self._closed:
                raise BusClosed("subscription is closed")
            deadline = deadline_of(timeout)
            decoder = self._decoder
            while True:
                if pending:  # filled by _drain, or by the recover policy's log fetches
                    return pending.popleft()
                if self._failed is not None:
                    raise self._failed
                if decoder.busy:  # a recover fill, a page per turn: the deadline holds between pages
                    self._settle(decoder.resolve(pending.append))
                    if not pending and deadline is not None and time.monotonic() >= deadline:
                        raise BusTimeout(f"no event within {timeout:g}s")
                    continue
                if self._drain():  # a gap fill or a run of filtered events: the deadline holds too
                    if not pending and deadline is not None and time.monotonic() >= deadline:
                        raise BusTimeout(f"no event within {timeout:g}s")
                    continue
                if self._closed:
                    raise BusClosed("subscription is closed")
                if deadline is None:
                    wait_ms = _SLICE_MS
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BusTimeout(f"no event within {timeout:g}s")
                    wait_ms = min(_SLICE_MS, int(remaining * 1000) + 1)
                if not self._sock.poll(wait_ms, _POLLIN):  # idle: is this still the same broker?
                    now = time.monotonic()
                    left = math.inf if deadline is None else deadline - now
                    flow = decoder.idle(now, left, pending.append)
                    if flow is not None:
                        self._settle(flow)

    def recv_many(self, max: int = 1024, timeout: float | None = None) -> list[Event]:
        """Every matching event that has arrived, up to ``max``, in one call (a list, oldest first).

        Waits up to ``timeout`` seconds (None: until an event arrives or the subscription closes)
        for the first; an empty list if none came in time. Losses and errors as for :meth:`recv`.
        """
        if max < 1:
            raise ValueError(f"max must be at least 1, not {max!r}")
        pending = self._pending
        if not pending:
            self._enough = max
            try:
                pending.appendleft(self.recv(timeout))
            except BusTimeout:
                return []
            finally:
                self._enough = 0
        if len(pending) < max:
            with self._lock:
                while len(pending) < max and not (self._closed or self._failed or self._decoder.busy):
                    if not self._drain(max):
                        break
        if len(pending) <= max:
            out = list(pending)
            pending.clear()
            return out
        popleft = pending.popleft
        return [popleft() for _ in range(max)]

    def _settle(self, flow: Resolve) -> None:
        """Run a cold flow; a loss under ``policy="drop"`` ends the subscription."""
        try:
            self._run(flow)
        except SlowSubscriberError as e:
            self._failed = e
            self._close_socket()

    def _drain(self, enough: int | None = None) -> int:
        """Decode what has already arrived (up to _DRAIN messages, or until ``enough`` events are
        pending) into the pending queue.

        Returns how many messages were read. A loss under ``policy="drop"`` ends the
        subscription after the events that came before it have been queued.
        """
        recv, decoder, append = self._sock.recv, self._decoder, self._pending.append
        if enough is None:
            enough = self._enough
        decode, feed = decoder.decode, decoder.feed
        cut = len(decoder.head)
        n = 0
        for n in range(1, _DRAIN + 1):
            try:
                topic = recv(_NOBLOCK)
            except zmq.Again:
                return n - 1
            stamp = recv()
            body = recv()
            if cut and topic[:2] == SESSION_PREFIX:  # the session's stream (PROTOCOL.md §5.1)
                topic, stamp = topic[cut:], stamp[8:]
            try:
                if len(stamp) == 16:
                    event = decode(topic, stamp, body)
                    if event is not None:
                        append(event)
                    elif decoder.held is not None:  # a gap: settled by a flow before reading on
                        self._run(decoder.resolve(append))
                        return n  # at most one page per turn: recv() looks at its deadline
                else:
                    feed(topic, stamp, body, append)
                    if decoder.held is not None:
                        self._run(decoder.resolve(append))
                        return n
            except SlowSubscriberError as e:
                self._failed = e
                self._close_socket()
                return n
            if n == 1 and not self._sock.getsockopt(_EVENTS) & _POLLIN:
                return 1  # it came alone: deliver it now, no Again raised and caught first (~1 us less)
            if enough and len(self._pending) >= enough:
                return n
        return n

    def __iter__(self) -> Iterator[Event]:
        """Events until the subscription is closed; a loss under ``policy="drop"`` raises."""
        while True:
            try:
                yield self.recv()
            except BusClosed:
                return

    # -- lifecycle ---------------------------------------------------------------------------

    def _close_socket(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)

    def close(self) -> None:
        """End the subscription; idempotent, and safe while another thread is in ``recv``."""
        self._closed = True
        with self._lock:
            self._close_socket()
        self._bus._forget(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
