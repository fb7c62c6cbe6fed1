"""The publisher logic both buses share (sync ``sdk.Bus``, asyncio ``sdk.aio.Bus``), socket-free.

Everything publish does besides the send itself: the topic cache and checks, encoding with the
size limit, and watching the broker — when the publisher's XPUB shows the broker's subscription
withdrawn, wait for a broker to subscribe again (counting the outage), and ask a broker that
(re)subscribed for its event size limit. The watch is a flow (:mod:`sdk.core.flows`) that yields
:data:`LOOK`, :class:`WaitForBroker` and an :class:`~sdk.core.flows.Ask` of the control endpoint;
each bus drives it with its own sockets. The sync bus inlines the encoding on its hot path.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

import msgpack

from schemas.envelope import (
    BATCH_BYTES,
    BATCH_PREFIX,
    DEFAULT_MAX_EVENT_SIZE,
    ENVELOPE_VERSION,
    MAX_BATCH_EVENTS,
)
from sdk.errors import BusError, InvalidEvent, MessageTooLarge
from sdk.core.flows import Ask, Flow
from sdk.wire import SIZE_QUESTION, check_event, encode_body, publish_timed_out, size_limit, topic_of, unencodable

WATCH_INTERVAL = 0.005
"""Seconds between two looks (one getsockopt) at whether the broker is still subscribed."""


class _Look:
    def __repr__(self) -> str:
        return "LOOK"


LOOK: Final = _Look()
"""A watch step: read every pending (un)subscription on the XPUB without waiting; send back None
if there was none, else whether the newest says the broker is there (``sdk.wire.broker_subscribed``)."""


class WaitForBroker(NamedTuple):
    """A watch step: wait up to ``timeout`` seconds for an (un)subscription; send back whether one came."""

    timeout: float


class PublisherCore:
    """The state and rules of a bus's publisher; :class:`sdk.Bus` and :class:`sdk.aio.Bus` subclass it.

    Attributes:
        max_event_size: the broker's limit on an encoded event, asked again whenever a broker
            (re)subscribes (unless given to ``connect``).
        broker_outages: times a publish found the broker gone and waited for it to come back.
    """

    def _init_publisher(
        self, *, name: str, publish_timeout: float, validate: bool, max_event_size: int | None
    ) -> None:
        self.name = name
        self.publish_timeout = publish_timeout
        self.validate = validate
        self.max_event_size = int(max_event_size or DEFAULT_MAX_EVENT_SIZE)
        self.broker_outages = 0
        self._asked_size = max_event_size is None
        self._topics: dict[str, bytes] = {}
        self._packb = msgpack.Packer(use_bin_type=True).pack
        self._watch_at = 0.0  # when publish next looks for the broker's (un)subscription

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

    def _batches(self, events: Iterable[Any]) -> list[list[bytes]]:
        """The messages that publish ``events`` (``(type, payload)`` or ``(type, payload,
        session_id)`` each), all encoded and checked before any is sent: each run of consecutive
        events of one type becomes batches (PROTOCOL.md §4.2) of up to MAX_BATCH_EVENTS events
        and BATCH_BYTES of bodies (never more than the event size limit).

        Raises:
            InvalidEvent: an event that is not such a tuple, a bad type or session id, a payload
                msgpack cannot encode, or (with ``validate``) one the catalogue refuses.
            MessageTooLarge: an encoded event is over the broker's limit.
        """
        limit, most = self.max_event_size, min(BATCH_BYTES, self.max_event_size)
        packb, name, topics, validate = self._packb, self.name, self._topics, self.validate
        now = time.time()
        heads: dict[Any, bytes] = {}  # per session id: the body up to its payload, packed once
        messages: list[list[bytes]] = []
        topic: bytes | None = None
        bodies: list[bytes] = []
        size = 0
        for event in events:
            session_id = None
            try:
                if len(event) == 2:
                    event_type, payload = event
                else:
                    event_type, payload, session_id = event
            except (TypeError, ValueError):
                raise InvalidEvent(f"an event to publish_many is (type, payload[, session_id]), not {event!r:.80}") from None
            try:
                this = topics.get(event_type) or topic_of(event_type, topics)
            except TypeError:
                this = topic_of(event_type, topics)
            if validate or (session_id is not None and not isinstance(session_id, str)):
                check_event(event_type, payload, session_id, validate=validate)
            try:
                head = heads.get(session_id)
                if head is None:
                    head = heads[session_id] = _ARRAY_5 + packb(ENVELOPE_VERSION) + packb(now) + packb(name) + packb(session_id)
                body = head + packb(payload)
            except (TypeError, ValueError, OverflowError) as e:
                raise unencodable(e, name, session_id) from None
            length = len(body)
            if length > limit:
                raise MessageTooLarge(length, limit)
            if this != topic or size + length > most or len(bodies) >= MAX_BATCH_EVENTS:
                if bodies:
                    messages.append(_batch(topic, bodies))  # type: ignore[arg-type]
                topic, bodies, size = this, [], 0
            bodies.append(body)
            size += length
        if bodies:
            messages.append(_batch(topic, bodies))  # type: ignore[arg-type]
        return messages

    def _check_size(self, body: bytes) -> None:
        """Raise MessageTooLarge if a new broker's limit, learnt just now, refuses ``body``."""
        if len(body) > self.max_event_size:
            raise MessageTooLarge(len(body), self.max_event_size)

    def _watch(self) -> Flow[None]:
        """React to (un)subscriptions pending on the publisher (a look is due: WATCH_INTERVAL).

        A connecting XPUB keeps its queue across a reconnect, so events published while the
        broker restarts wait for the new one. But an XPUB with no subscriber at all silently drops
        what it is given: should the broker's subscription be withdrawn (``\\x00``), wait for a
        broker to subscribe again (``\\x01``), at most ``publish_timeout``.

        Raises:
            PublishTimeout: the broker did not come back within ``publish_timeout``.
        """
        there = yield LOOK
        if there is None:
            return
        if not there:
            self.broker_outages += 1
            deadline = time.monotonic() + self.publish_timeout
            while not there:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not (yield WaitForBroker(remaining)):
                    raise publish_timed_out(self.publish_timeout)
                there = bool((yield LOOK))
        yield from self._relearn_limit()

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


_ARRAY_5 = b"\x95"  # msgpack's header of a 5-element array: the body [1, ts, source, session_id, payload]


def _batch(topic: bytes, bodies: list[bytes]) -> list[bytes]:
    """The three frames of one batch (PROTOCOL.md §4.2)."""
    return [BATCH_PREFIX + topic, struct.pack(f"!{len(bodies)}I", *map(len, bodies)), b"".join(bodies)]


class Batch:
    """Events gathered for :meth:`sdk.Bus.publish_many`: ``with bus.batch() as batch:
    batch.publish(...)``. What the block gathered is published when it ends (every
    ``flush_every`` events on the way); an exception in the block discards what is not sent yet.
    One thread's: give each thread its own."""

    def __init__(self, publish_many: Any, flush_every: int) -> None:
        self._publish_many = publish_many
        self.flush_every = flush_every
        self.events: list[tuple[str, Any, str | None]] = []

    def publish(self, event_type: str, payload: Any = None, *, session_id: str | None = None) -> None:
        """Add an event; publish what was gathered once it holds ``flush_every`` events."""
        events = self.events
        events.append((event_type, payload, session_id))
        if len(events) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Publish what was gathered now (errors as for ``publish_many``)."""
        events, self.events = self.events, []
        if events:
            self._publish_many(events)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.flush()
        else:
            self.events = []
