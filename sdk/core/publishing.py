"""The publisher logic both buses share (sync ``sdk.Bus``, asyncio ``sdk.aio.Bus``), socket-free.

Everything publish does besides the send itself: the topic cache and checks, encoding with the
size limit, numbering events and keeping those the broker has not confirmed (PROTOCOL.md §4.1),
and watching the broker — reading what arrives on the publisher's XPUB (the broker's
(un)subscriptions, confirmations), waiting for a broker that withdrew its subscription (counting
the outage), asking a broker that (re)subscribed for its event size limit, and sending it again,
in order, every event not yet confirmed. The watch is a flow (:mod:`sdk.core.flows`) that yields
:data:`LOOK`, :class:`WaitForBroker`, :class:`Resend` and an :class:`~sdk.core.flows.Ask` of the
control endpoint; each bus drives it with its own sockets. The sync bus inlines the encoding and
the numbering on its hot path.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgpack

from schemas.envelope import (
    CONFIRM,
    CONFIRM_ENTRY,
    CONFIRM_PAIR,
    DEFAULT_MAX_EVENT_SIZE,
    IDENT,
    WANT_VERSION,
)
from sdk.errors import BusError, MessageTooLarge, PublishTimeout
from sdk.core.flows import Ask, Flow
from sdk.wire import SIZE_QUESTION, check_event, encode_body, publish_timed_out, size_limit, topic_of

WATCH_INTERVAL = 0.005
"""Seconds between two looks (one getsockopt) at what the broker sent the publisher."""

DEFAULT_PUBLISH_BUFFER = 16 * 1024 * 1024
"""Bytes of event bodies a bus keeps unconfirmed before ``publish`` waits for confirmations."""

pack_ident = IDENT.pack


class _Look:
    def __repr__(self) -> str:
        return "LOOK"


LOOK: Final = _Look()
"""A watch step: read every message pending on the XPUB without waiting and send back the list
(empty if there was none): the broker's (un)subscriptions (``\x01``, ``\x00``) and confirmations
(``\x02``)."""


class WaitForBroker(NamedTuple):
    """A watch step: wait up to ``timeout`` seconds for a message on the XPUB; send back whether one came."""

    timeout: float


class Resend(NamedTuple):
    """A watch step: send these ``(topic, ident, body)`` messages again, in order, each whole
    (blocking while the queue is full, at most ``publish_timeout``, then PublishTimeout)."""

    messages: list[tuple[bytes, bytes, bytes]]


@dataclass(frozen=True, slots=True)
class PublishStats:
    """A bus's publishing counters (``bus.publish_stats``).

    Attributes:
        sent: events published (each counted once, however often it was sent again).
        confirmed: events the broker confirmed (stamped; with an event log, on disk in it).
        resent: events sent again after the broker came back.
        unconfirmed: events published and not yet confirmed (kept to be sent again).
        unconfirmed_bytes: their bodies' size; ``publish`` waits once it would pass ``publish_buffer``.
    """

    sent: int
    confirmed: int
    resent: int
    unconfirmed: int
    unconfirmed_bytes: int


class PublisherCore:
    """The state and rules of a bus's publisher; :class:`sdk.Bus` and :class:`sdk.aio.Bus` subclass it.

    Attributes:
        max_event_size: the broker's limit on an encoded event, asked again whenever a broker
            (re)subscribes (unless given to ``connect``).
        broker_outages: times a publish found the broker gone and waited for it to come back.
        publisher_id: this bus's identity on the wire (random, non-zero, PROTOCOL.md §4.1).
        publish_buffer: bytes of unconfirmed event bodies kept before ``publish`` waits.
    """

    def _init_publisher(
        self,
        *,
        name: str,
        publish_timeout: float,
        validate: bool,
        max_event_size: int | None,
        publish_buffer: int = DEFAULT_PUBLISH_BUFFER,
    ) -> None:
        self.name = name
        self.publish_timeout = publish_timeout
        self.validate = validate
        self.max_event_size = int(max_event_size or DEFAULT_MAX_EVENT_SIZE)
        self.publish_buffer = int(publish_buffer)
        self.broker_outages = 0
        self.publisher_id = secrets.randbits(64) or 1
        self._asked_size = max_event_size is None
        self._topics: dict[str, bytes] = {}
        self._packb = msgpack.Packer(use_bin_type=True).pack
        self._watch_at = 0.0  # when publish next looks at what the broker sent
        self._number = 0  # the last number given to an event
        self._through = 0  # every number up to this one is confirmed
        # The unconfirmed events, (topic, ident, body, _sent_bytes after it), the first numbered
        # _through + 1: confirming is one slice, whatever it covers.
        self._kept: list[tuple[bytes, bytes, bytes, int]] = []
        self._sent_bytes = 0  # body bytes of every event published
        self._confirmed_bytes = 0  # ... of every event confirmed
        self._bytes_limit = self.publish_buffer  # _sent_bytes may not pass this while events are kept
        self._resent = 0
        self._wanted: dict[int, int] = {}  # number -> version (0 until confirmed) of wait=True events

    @property
    def publish_stats(self) -> PublishStats:
        """Counters of this bus's publishing: sent, confirmed, resent, unconfirmed (events, bytes)."""
        return PublishStats(
            self._number, self._through, self._resent, len(self._kept), self._sent_bytes - self._confirmed_bytes
        )

    def _checked_topic(self, event_type: str, payload: Any, session_id: str | None) -> bytes:
        """The topic frame of an event, after the checks besides encoding.

        Raises:
            InvalidEvent: bad type or session id, or (with ``validate``) a payload that does not
                match the catalogue.
        """
        topic = topic_of(event_type, self._topics)
        check_event(event_type, payload, session_id, validate=self.validate)
        return topic

    def _body(self, payload: Any, session_id: str | None) -> bytes:
        """The body frame of an event, checked against the current size limit.

        Raises:
            InvalidEvent: a payload (or source, session id) msgpack cannot encode.
            MessageTooLarge: the encoded event is over the broker's limit.
        """
        return encode_body(self._packb, self.name, session_id, payload, self.max_event_size)

    def _check_size(self, body: bytes) -> None:
        """Raise MessageTooLarge if a new broker's limit, learnt just now, refuses ``body``."""
        if len(body) > self.max_event_size:
            raise MessageTooLarge(len(body), self.max_event_size)

    # -- numbering and confirmations ------------------------------------------------------------

    def _next_ident(self, want_version: bool) -> tuple[int, bytes]:
        """The next event's number and ident frame (not yet taken: :meth:`_sent` takes it)."""
        number = self._number + 1
        return number, pack_ident(self.publisher_id, number | WANT_VERSION if want_version else number)

    def _sent(self, number: int, topic: bytes, ident: bytes, body: bytes) -> None:
        """Keep an event just sent until the broker confirms it."""
        self._number = number
        self._sent_bytes += len(body)
        self._kept.append((topic, ident, body, self._sent_bytes))

    def _absorb(self, messages: list[bytes]) -> bool | None:
        """Take in what the XPUB received: apply confirmations; return whether the newest
        (un)subscription says the broker is there, or None if none came."""
        there = None
        for message in messages:
            first = message[:1]
            if first == CONFIRM:
                self._confirm(message)
            elif first:
                there = first == b"\x01"
        return there

    def _confirm(self, message: bytes) -> None:
        """Apply the entries of a confirmation (PROTOCOL.md §4.1) that are this publisher's."""
        me, pos, size = self.publisher_id, 1, len(message)
        while pos + CONFIRM_ENTRY.size <= size:
            publisher, through, n = CONFIRM_ENTRY.unpack_from(message, pos)
            pos += CONFIRM_ENTRY.size
            if publisher == me:
                for i in range(n):
                    number, version = CONFIRM_PAIR.unpack_from(message, pos + i * CONFIRM_PAIR.size)
                    if number in self._wanted:
                        self._wanted[number] = version
                count = min(through, self._number) - self._through
                if count > 0:
                    self._confirmed_bytes = self._kept[count - 1][3]
                    self._bytes_limit = self._confirmed_bytes + self.publish_buffer
                    del self._kept[:count]
                    self._through += count
            pos += n * CONFIRM_PAIR.size

    # -- flows ------------------------------------------------------------------------------------

    def _watch(self) -> Flow[None]:
        """React to what is pending on the publisher (a look is due: WATCH_INTERVAL).

        A connecting XPUB keeps its queue across a reconnect, so events published while the
        broker restarts wait for the new one. But an XPUB with no subscriber at all silently drops
        what it is given: should the broker's subscription be withdrawn (``\\x00``), wait for a
        broker to subscribe again (``\\x01``), at most ``publish_timeout``. A broker that
        subscribes again may be a new one that never got what was in flight (and refuses a number
        past the next it expects): send every unconfirmed event again, in order, before new ones.

        Raises:
            PublishTimeout: the broker did not come back within ``publish_timeout``.
        """
        there = self._absorb((yield LOOK))
        if there is None:
            return
        if not there:
            self.broker_outages += 1
            deadline = time.monotonic() + self.publish_timeout
            while not there:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not (yield WaitForBroker(remaining)):
                    raise publish_timed_out(self.publish_timeout)
                there = bool(self._absorb((yield LOOK)))
        yield from self._relearn_limit()
        if self._kept:
            messages = [(topic, ident, body) for topic, ident, body, _ in self._kept]
            yield Resend(messages)
            self._resent += len(messages)

    def _relearn_limit(self) -> Flow[None]:
        """A broker subscribed again: perhaps a restarted one with a smaller ``--max-event-size``,
        whose MAXMSGSIZE would drop this connection (and what is queued on it) for a bigger event.
        Ask it; without an answer the old limit stays (the next subscription asks again)."""
        if not self._asked_size:
            return
        try:
            self.max_event_size = size_limit((yield Ask("control", SIZE_QUESTION, retries=0)))
        except BusError:
            pass

    def _until(self, done: Any, timeout: float, why: str) -> Flow[None]:
        """Read confirmations (and react to the broker as the watch does) until ``done()``.

        Raises:
            PublishTimeout: not ``done()`` within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishTimeout(f"{why} within {timeout:g}s")
            if (yield WaitForBroker(remaining)):
                yield from self._watch()

    def _room(self, size: int) -> Flow[None]:
        """Wait until an event of ``size`` body bytes fits in ``publish_buffer`` (an empty buffer
        takes any event).

        Raises:
            PublishTimeout: no room within ``publish_timeout``; nothing was sent.
        """

        def fits() -> bool:
            return not self._kept or self._sent_bytes + size <= self._bytes_limit

        yield from self._until(
            fits, self.publish_timeout, f"the broker confirmed too little to free {size} bytes of publish_buffer"
        )

    def _flush(self, timeout: float | None) -> Flow[None]:
        """Wait until every event published so far is confirmed.

        Raises:
            PublishTimeout: some were not confirmed within ``timeout`` (default ``publish_timeout``).
        """
        target = self._number
        yield from self._until(
            lambda: self._through >= target,
            self.publish_timeout if timeout is None else timeout,
            f"events up to number {target} were not all confirmed",
        )

    def _version(self, number: int) -> Flow[int]:
        """The version of the event ``number`` (published with WANT_VERSION), once confirmed.

        Raises:
            PublishTimeout: not confirmed (or its version not reported) within ``publish_timeout``.
        """
        try:
            yield from self._until(
                lambda: self._wanted[number] != 0, self.publish_timeout, f"event {number} was not confirmed"
            )
            return self._wanted[number]
        finally:
            del self._wanted[number]
