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

import logging

import secrets
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgpack

from schemas.envelope import (
    BATCH_BYTES,
    BATCH_IDENTITY,
    BATCH_PREFIX,
    CONFIRM,
    CONFIRM_ENTRY,
    CONFIRM_PAIR,
    DEFAULT_MAX_EVENT_SIZE,
    ENVELOPE_VERSION,
    IDENTIFIED_MARK,
    IDENTITY,
    MAX_BATCH_EVENTS,
    UINT64,
    WANT_VERSION,
)
from sdk.errors import BusError, InvalidEvent, MessageTooLarge, PublishTimeout
from sdk.core.flows import Ask, Flow
from sdk.wire import SIZE_QUESTION, check_event, encode_body, publish_timed_out, size_limit, topic_of, unencodable
from sdk.spare_cpu import CONFIRM_SPIN, start_meter

WATCH_INTERVAL = 0.005
"""Seconds between two looks (one getsockopt) at what the broker sent the publisher."""

SIZE_ASK_TIMEOUT = 1.0
SIZE_ASK_RETRIES = 2
"""How long a publisher asks a broker that (re)subscribed for its size limit: publishing waits
meanwhile, so a request lost with the old broker's connection is asked again soon (Lazy Pirate
opens a new socket), not after the bus's whole ``timeout``."""

DEFAULT_PUBLISH_BUFFER = 16 * 1024 * 1024
"""Bytes of event bodies a bus keeps unconfirmed before ``publish`` waits for confirmations."""

IDENTITY_SIZE = IDENTITY.size
"""Bytes an identified body has beyond the anonymous one's (the 0x97 header replaces 0x95)."""

NUMBER_BASE = 1 << 32
"""A bus numbers its events from NUMBER_BASE + 1, and its publisher id is at least NUMBER_BASE:
msgpack packs every int from 2^32 on as a uint64 (0xcf + 8 bytes), so its own packer writes the
identity exactly as PROTOCOL.md §4.1 wants it, with no bytes added by hand."""

pack_number = struct.Struct("!Q").pack
"""The number's 8 bytes, the last of an identified body (PROTOCOL.md §4.1)."""

SEVEN = IDENTIFIED_MARK

log = logging.getLogger("pryxbus.sdk")


class _Step:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


LOOK: Final = _Step("LOOK")
"""A watch step: read every message pending on the XPUB without waiting and send back the list
(empty if there was none): the broker's (un)subscriptions (``\x01``, ``\x00``) and confirmations
(``\x02``)."""

RECONNECTED: Final = _Step("RECONNECTED")
"""A watch step: send back whether the XPUB made a connection (a handshake) since it was opened
or last asked: the broker subscribes again on every publisher's connection, so a repeated
subscription alone does not say that this one's connection is new."""


class WaitForBroker(NamedTuple):
    """A watch step: wait up to ``timeout`` seconds for a message on the XPUB; send back whether one
    came. ``confirming``: what is awaited is a confirmation, due within a round trip (the sync
    front may busy-poll for it, ``sdk.Bus(spin=)``), not a broker that has gone."""

    timeout: float
    confirming: bool = False


class Resend(NamedTuple):
    """A watch step: send these events again, in order, each whole (blocking while the queue is
    full, at most ``publish_timeout``, then PublishTimeout); ``kept`` is flat: topic, body, topic,
    body, ..."""

    kept: list[bytes]


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
        spin: see :meth:`_init_publisher`.
    """

    def _init_publisher(
        self,
        *,
        name: str,
        publish_timeout: float,
        validate: bool,
        max_event_size: int | None,
        publish_buffer: int = DEFAULT_PUBLISH_BUFFER,
        spin: float = CONFIRM_SPIN,
    ) -> None:
        self.name = name
        self.spin = float(spin)
        """Seconds a wait for a confirmation (``publish(wait=True)``, ``flush``, a full
        ``publish_buffer``) busy-polls before it sleeps, while the machine has a CPU to spare
        (``sdk/spare_cpu.py``; the asyncio bus lets its loop's other tasks run between looks); 0 never."""
        if self.spin > 0:
            start_meter()
        self.publish_timeout = publish_timeout
        self.validate = validate
        self.max_event_size = int(max_event_size or DEFAULT_MAX_EVENT_SIZE)
        self.publish_buffer = int(publish_buffer)
        self.broker_outages = 0
        self.publisher_id = secrets.randbits(64) | NUMBER_BASE
        # The identity's first 10 bytes (0xcf, publisher id, 0xcf): the number's 8 follow.
        self._id_head = bytes([UINT64]) + self.publisher_id.to_bytes(8, "big") + bytes([UINT64])
        self._asked_size = max_event_size is None
        self._topics: dict[str, bytes] = {}
        self._packb = msgpack.Packer(use_bin_type=True).pack
        self._watch_at = 0.0  # when publish next looks at what the broker sent
        self._number = NUMBER_BASE  # the last number given to an event
        self._numbered_from = NUMBER_BASE  # the number before this bus's first (publish_stats)
        self._through = NUMBER_BASE  # every number up to this one is confirmed
        # The unconfirmed events, flat (topic, body, topic, body, ...: no tuple per event), the
        # first numbered _through + 1: confirming is one slice, whatever it covers.
        self._kept: list[bytes] = []
        self._kept_bytes = 0  # body bytes in _kept; publish waits once it would pass publish_buffer
        self._resent = 0
        self._withdrawn = False  # the broker's subscription went away since the last resend
        self._wanted: dict[int, int] = {}  # number -> version (0 until confirmed) of wait=True events

    @property
    def publish_stats(self) -> PublishStats:
        """Counters of this bus's publishing: sent, confirmed, resent, unconfirmed (events, bytes)."""
        return PublishStats(
            self._number - self._numbered_from, self._through - self._numbered_from, self._resent, len(self._kept) >> 1,
            self._kept_bytes,
        )

    def _number_after(self, publisher_id: int, through: int) -> None:
        """Publish from now on as ``publisher_id``, numbering after ``through`` (a number on the
        wire, NUMBER_BASE for none yet): a restarted transform (:mod:`sdk.core.transforming`)
        continues the numbering of its earlier runs, so the broker takes an event it sends again
        for the one it already stamped (PROTOCOL.md §4.1).

        Raises:
            BusError: this bus has events not confirmed yet (numbered as the publisher it was).
        """
        if self._kept:
            raise BusError(f"{len(self._kept) >> 1} event(s) of this bus are not confirmed yet: flush() first")
        self.publisher_id = publisher_id | NUMBER_BASE
        self._id_head = bytes([UINT64]) + self.publisher_id.to_bytes(8, "big") + bytes([UINT64])
        self._number = self._through = self._numbered_from = max(through, NUMBER_BASE)

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
        body = encode_body(self._packb, self.name, session_id, payload, 1 << 62)
        self._check_size(body)
        return body

    def _batches(self, events: Iterable[Any]) -> list[Outgoing]:
        """The batches that publish ``events`` (``(type, payload)`` or ``(type, payload,
        session_id)`` each), all encoded and checked before any is sent: each run of consecutive
        events of one type becomes batches (PROTOCOL.md §4.2) of up to MAX_BATCH_EVENTS events
        and BATCH_BYTES of bodies (never more than the event size limit). The bodies are
        anonymous; the batch carries its publisher id and first number once, in a frame of its
        own made when it is sent (:meth:`_batch_identity`).

        Raises:
            InvalidEvent: an event that is not such a tuple, a bad type or session id, a payload
                msgpack cannot encode, or (with ``validate``) one the catalogue refuses.
            MessageTooLarge: an encoded event is over the broker's limit.
        """
        limit, most = self.max_event_size, min(BATCH_BYTES, self.max_event_size)
        packb, name, topics, validate = self._packb, self.name, self._topics, self.validate
        now = time.time()
        heads: dict[Any, bytes] = {}  # per session id: the body up to its payload, packed once
        messages: list[Outgoing] = []
        topic: bytes | None = None
        cores: list[bytes] = []
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
                core = head + packb(payload)
            except (TypeError, ValueError, OverflowError) as e:
                raise unencodable(e, name, session_id) from None
            length = len(core)
            if length > limit:
                raise MessageTooLarge(length, limit)
            if this != topic or size + length > most or len(cores) >= MAX_BATCH_EVENTS:
                if cores:
                    messages.append(_outgoing(topic, cores, size))  # type: ignore[arg-type]
                topic, cores, size = this, [], 0
            cores.append(core)
            size += length
        if cores:
            messages.append(_outgoing(topic, cores, size))  # type: ignore[arg-type]
        return messages

    def _batch_identity(self) -> bytes:
        """The identity frame of the batch about to be sent: this bus's id and the next number,
        the first of the batch's (PROTOCOL.md §4.2; taken by :meth:`_sent_batch` once it is sent)."""
        return BATCH_IDENTITY.pack(self.publisher_id, self._number + 1)

    def _sent_batch(self, batch: Outgoing) -> None:
        """Take the numbers of a batch just sent and keep its events until the broker confirms
        them, each as if published alone (sent again one by one, identified then: :meth:`_watch`)."""
        bodies = batch.bodies
        self._number += len(bodies)
        kept = [batch.topic] * (2 * len(bodies))
        kept[1::2] = bodies
        self._kept += kept
        self._kept_bytes += batch.size

    def _check_size(self, body: bytes) -> None:
        """Raise MessageTooLarge if the identified form of the anonymous ``body`` is over the
        broker's limit (perhaps a new broker's, learnt just now)."""
        if len(body) + IDENTITY_SIZE > self.max_event_size:
            raise MessageTooLarge(len(body) + IDENTITY_SIZE, self.max_event_size)

    # -- numbering and confirmations ------------------------------------------------------------

    def _identified(self, body: bytes, want_version: bool) -> bytes:
        """The anonymous ``body`` as the next event's identified one (numbered ``_number + 1``,
        not yet taken: :meth:`_sent` takes it)."""
        number = self._number + 1
        return SEVEN + body[1:] + self._id_head + pack_number(number | WANT_VERSION if want_version else number)

    def _sent(self, topic: bytes, body: bytes) -> None:
        """Take the number of an event just sent and keep it until the broker confirms it."""
        self._number += 1
        self._kept_bytes += len(body)
        self._kept += (topic, body)

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
                if not there:
                    self._withdrawn = True
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
                    kept, end = self._kept, 2 * count
                    self._kept_bytes -= sum(map(len, kept[1:end:2]))
                    del kept[:end]
                    self._through += count
            pos += n * CONFIRM_PAIR.size

    # -- flows ------------------------------------------------------------------------------------

    def _watch(self) -> Flow[None]:
        """React to what is pending on the publisher (a look is due: WATCH_INTERVAL).

        A connecting XPUB keeps its queue across a reconnect, so events published while the
        broker restarts wait for the new one. But an XPUB with no subscriber at all silently drops
        what it is given: should the broker's subscription be withdrawn (``\\x00``), wait for a
        broker to subscribe again (``\\x01``), at most ``publish_timeout``. A broker that
        subscribes again after this publisher's connection was made anew (or after withdrawing)
        may be a new one that never got what was in flight (and refuses a number past the next it
        expects): send every unconfirmed event again, in order, before new ones. A subscription
        repeated on the same connection is the broker greeting another publisher: nothing to do.

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
        reconnected = yield RECONNECTED  # asked even after a withdrawal: the handshake is used up
        if not (reconnected or self._withdrawn):
            return
        self._withdrawn = False
        yield from self._relearn_limit()
        if self._kept:
            kept = self._identified_kept()
            yield Resend(kept)
            self._resent += len(kept) >> 1

    def _identified_kept(self) -> list[bytes]:
        """The unconfirmed events to send again, each identified: a batched event is kept with its
        anonymous body (its batch carried the identity), numbered by its place (the first kept
        event is number ``_through + 1``)."""
        kept = list(self._kept)
        first, id_head = self._through + 1, self._id_head
        for i in range(1, len(kept), 2):
            body = kept[i]
            if body[:1] == _ARRAY_5:
                kept[i] = SEVEN + body[1:] + id_head + pack_number(first + (i >> 1))
        return kept

    def _relearn_limit(self) -> Flow[None]:
        """A broker subscribed again: perhaps a restarted one with a smaller ``--max-event-size``,
        whose MAXMSGSIZE would drop this connection (and what is queued on it) for a bigger event.
        Ask it; without an answer the old limit stays (the next subscription asks again)."""
        if not self._asked_size:
            return
        try:
            self.max_event_size = size_limit(
                (yield Ask("control", SIZE_QUESTION, timeout=SIZE_ASK_TIMEOUT, retries=SIZE_ASK_RETRIES))
            )
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
            if (yield WaitForBroker(remaining, True)):
                yield from self._watch()

    def _room(self, size: int) -> Flow[None]:
        """Wait until an event of ``size`` body bytes fits in ``publish_buffer`` (an empty buffer
        takes any event).

        Raises:
            PublishTimeout: no room within ``publish_timeout``; nothing was sent.
        """

        def fits() -> bool:
            return not self._kept or self._kept_bytes + size <= self.publish_buffer

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
            f"events up to number {target - NUMBER_BASE} were not all confirmed",
        )

    def _closing(self, timeout: float) -> Flow[None]:
        """Before the bus closes: wait, at most ``timeout``, until the broker has confirmed every
        event this bus published. A closed connection loses what the broker had not read of it
        yet, and a bus that is closed no longer sends anything again, so what is still
        unconfirmed then is reported, with its count, in a warning."""
        if not self._kept:
            return
        try:
            yield from self._flush(timeout)
        except BusError as e:
            log.warning("%s closes with %d published event(s) the broker has not confirmed (%s): they may be"
                        " lost; call flush() before close() to know", self.name, len(self._kept) >> 1, e)

    def _version(self, number: int) -> Flow[int]:
        """The version of the event ``number`` (published with WANT_VERSION), once confirmed.

        Raises:
            PublishTimeout: not confirmed (or its version not reported) within ``publish_timeout``.
        """
        try:
            yield from self._until(
                lambda: self._wanted[number] != 0,
                self.publish_timeout,
                f"event {number - NUMBER_BASE} was not confirmed",
            )
            return self._wanted[number]
        finally:
            del self._wanted[number]

class Outgoing(NamedTuple):
    """A batch encoded by :meth:`PublisherCore._batches`, to be numbered when sent."""

    topic: bytes
    """The events' own topic frame (they are kept, and sent again, one by one)."""
    lengths: bytes
    """The batch's second frame: each body's length (PROTOCOL.md §4.2)."""
    bodies: list[bytes]
    """Each event's anonymous body."""
    joined: bytes
    """The batch's third frame: the bodies, one after the other."""
    size: int
    """The bodies' total size."""


_ARRAY_5 = b"\x95"  # msgpack's header of a 5-element array: the body [1, ts, source, session_id, payload]


def _outgoing(topic: bytes, bodies: list[bytes], size: int) -> Outgoing:
    return Outgoing(topic, struct.pack(f"!{len(bodies)}I", *map(len, bodies)), bodies, b"".join(bodies), size)


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
