"""The two flows that start a subscription: the handshake, and the ``since=`` seam."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from sdk.core.decoding import EventDecoder, FloorDecoder, Policy, Resolve, event_of_row
from sdk.core.flows import PAGE, PING, Ask, Receive, broker_position, log_pages, replay_request, unconfirmed
from sdk.core.recovering import RecoveringDecoder
from sdk.event import Event


def handshake(decoder: EventDecoder, pending: deque[Event], token: bytes, *, endpoint: str, timeout: float) -> Resolve:
    """Return once the broker has our filters: it answers the sync topic ``token``, subscribed after
    them. Events that arrive first are decoded into ``pending``; messages without exactly three
    frames are counted in ``decoder.malformed`` and skipped. Then learn which run the broker is.

    Raises:
        BusUnavailable: no sync reply within ``timeout``.
        SlowSubscriberError: under ``drop``, a gap among the events that came first.
    """
    deadline = time.monotonic() + timeout
    append = pending.append
    while True:
        frames = yield Receive(deadline)
        if frames is None:
            raise unconfirmed(endpoint, timeout)
        if len(frames) != 3:
            decoder.malformed += 1
            continue
        topic, stamp, body = frames
        if topic == token:
            break
        if topic[:1] != b"\x00":  # an event that arrived before the sync reply: keep it
            decoder.feed(topic, stamp, body, append)
            if decoder.held is not None:
                yield from decoder.resolve(append)
    yield from decoder.first_look()


def seam(decoder: EventDecoder, pending: deque[Event], patterns: tuple[str, ...], since: int, *, timeout: float) -> Resolve:
    """Put every logged event after ``since`` in front of a live subscription.

    Subscribed first, we ask the broker for its current version B, replay ``(since, B]`` from the
    log (waiting until the log has reached B) and deliver live events above B only: every event
    above B is live (stamped after the subscription was confirmed), every event up to B is in the
    replay: no gap, no duplicate.

    Raises:
        BusUnavailable: the broker or the event log did not answer.
        BusTimeout: the log did not catch up with the broker within ``timeout``.
    """
    assert isinstance(decoder, (FloorDecoder, RecoveringDecoder))
    target, stamped = broker_position((yield Ask("control", PING)))
    floor = max(since, target)
    history: list[Event] = []

    def take(rows: list[Any], _scanned: int) -> None:
        history.extend(event_of_row(row) for row in rows)

    if since < target:
        request = replay_request(patterns, since=since, until=target, session_id=decoder.session_id)
        yield from log_pages(request, wait=stamped, timeout=timeout, on_page=take)
    decoder.set_floor(floor)
    live = [e for e in pending if e.version > floor]
    pending.clear()
    pending.extend(history)
    pending.extend(live)


def decoder_for(
    patterns: tuple[str, ...],
    policy: Policy,
    *,
    since: int | None,
    timeout: float,
    page: int = PAGE,
    session_id: str | None = None,
) -> EventDecoder:
    """The decoder a subscription with these options uses (chosen once, never swapped). With
    ``session_id`` a ``drop`` or ``count`` subscription listens to that session's stream
    (PROTOCOL.md §5.1); ``recover`` needs every version, so it filters the session itself.

    Raises:
        ValueError: an unknown policy.
    """
    if policy == "recover":
        return RecoveringDecoder(patterns, timeout=timeout, page=page)
    if since is not None:
        return FloorDecoder(patterns, policy, session_id)
    return EventDecoder(patterns, policy, session_id)


class Counters:
    """What both fronts' subscriptions report, read from their decoder and their filter."""

    _decoder: Any
    _pending: Any
    _closed: bool

    @property
    def lost(self) -> int:
        """Events lost so far (with ``policy="count"``; with ``"drop"`` the first loss ends it)."""
        return self._decoder.lost

    @property
    def received(self) -> int:
        """Events decoded for this subscription so far (delivered, or queued for ``recv``)."""
        return self._decoder.received

    @property
    def recovered(self) -> int:
        """Events fetched from the event log to fill gaps (``policy="recover"`` only)."""
        return self._decoder.recovered

    @property
    def restarts(self) -> int:
        """Broker restarts this subscription rode through (seen as a topic sequence starting over)."""
        return self._decoder.restarts

    @property
    def malformed(self) -> int:
        """Delivered messages that could not be decoded and were skipped."""
        return self._decoder.malformed

    @property
    def filtered_out(self) -> int:
        """Decoded events that the subscription's ``where``/``session_id`` filter did not deliver."""
        return getattr(self._pending, "dropped", 0)

    @property
    def where_errors(self) -> int:
        """Events on which the ``where`` callable raised (each counted as not matching)."""
        return getattr(self._pending, "errors", 0)

    @property
    def closed(self) -> bool:
        return self._closed
