"""The subscription state machine: decode delivered frames, track per-topic sequences, see gaps.

A decoder holds no socket and does no I/O. When a message does not follow on (a sequence or version
gap) it decodes nothing of it, keeps it in ``held`` and returns; the front then drives the flow
``resolve(append)`` (ask the broker which run it is, or fetch the gap from the log), which settles
the gap and decodes the held message. While idle, ``idle(now, left)`` is the flow to run, if any.
The hot paths (:meth:`EventDecoder.decode` for one event, :meth:`EventDecoder.feed` for a run)
inline the codec of :mod:`schemas.envelope`; tests/test_codec.py checks that they agree.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Literal

import msgpack

from schemas.envelope import ENVELOPE_VERSION, STAMP, Envelope, MalformedEvent, decode_body, decode_row, split_run
from schemas.topics import compile_matcher, zmq_prefixes
from sdk.core.flows import PING, Ask, Flow, broker_epoch, broker_position, log_pages, replay_request
from sdk.errors import BusError, BusTimeout, BusUnavailable, SlowSubscriberError
from sdk.event import Event

Policy = Literal["drop", "count", "recover"]
POLICIES = ("drop", "count", "recover")

IDLE_LOOK = 1.0
"""Seconds between two questions to the broker, while no event arrives, about whether it restarted."""
IDLE_LOOK_TIMEOUT = 0.2
"""Longest such a question may hold up a receive (a broker that does not answer is looked at later)."""

Append = Callable[[Event], None]
Resolve = Flow[None]

_unpack_stamp = STAMP.unpack
_unpack_run = struct.unpack
_unpackb = msgpack.unpackb
_Unpacker = msgpack.Unpacker
_new_event = object.__new__
_set_dict = object.__setattr__


def event_of(envelope: Envelope) -> Event:
    """The SDK's Event for a decoded envelope (``Event.seq`` is the envelope's ``topic_seq``)."""
    return Event(
        envelope.type,
        envelope.payload,
        envelope.version,
        envelope.ts,
        envelope.source,
        envelope.session_id,
        envelope.topic_seq,
    )


def event_of_row(row: list[Any]) -> Event:
    """The Event of one log row ``[version, topic_seq, type, body]``.

    Raises:
        MalformedEvent: the row does not follow the layout.
    """
    return event_of(decode_row(row))


class EventDecoder:
    """Decoder of a ``drop`` or ``count`` subscription: exact loss detection by topic sequence."""

    def __init__(self, patterns: tuple[str, ...], policy: Policy) -> None:
        if policy not in ("drop", "count"):
            raise ValueError(f"policy must be 'drop' or 'count' here, not {policy!r}")
        self.matches: Callable[[bytes], bool] = compile_matcher(patterns)
        self.prefixes = zmq_prefixes(patterns)
        self.policy: Policy = policy
        self.last_topic_seq: dict[bytes, int] = {}
        self.lost = 0
        self.malformed = 0
        self.received = 0
        self.restarts = 0
        self.recovered = 0
        self.held: tuple[bytes, bytes, bytes] | None = None
        """A message that does not follow on, kept back until ``resolve`` settles the gap."""
        self.epoch: int | None = None
        """The broker's ``first_version`` when last asked: a new value means a new broker."""
        self._names: dict[bytes, str] = {}
        self._next_look = 0.0

    # -- the hot paths -----------------------------------------------------------------------

    def feed(self, topic: bytes, stamp: bytes, body: bytes, append: Append) -> None:
        """Decode one delivered message, a single event or a run (PROTOCOL.md), and append its
        matching events in order; a message that does not follow on is held (see ``resolve``)."""
        if len(stamp) == 16:
            event = self.decode(topic, stamp, body)
            if event is not None:
                append(event)
            return
        try:
            version, topic_seq, *sizes = _unpack_run(f"!QQ{(len(stamp) - 16) >> 2}I", stamp)
        except struct.error:
            self.malformed += 1
            return
        if not version:
            return
        n = len(sizes)
        last_topic_seq = self.last_topic_seq
        last = last_topic_seq.get(topic)
        if last is not None and topic_seq != last + 1:
            self.held = (topic, stamp, body)
            return
        last_topic_seq[topic] = topic_seq + n - 1
        if not self.matches(topic):
            return
        if sum(sizes) != len(body):
            self.malformed += n
            return
        event_type = self._names.get(topic) or self._name(topic)
        # One streaming unpacker for the run; each body must end exactly at its length, so a
        # malformed body is counted alone and decoding starts over at the next one.
        unpacker = _Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(body)
        unpack, tell = unpacker.unpack, unpacker.tell
        base = end = good = 0
        for size in sizes:
            end += size
            try:
                env, ts, source, session_id, payload = unpack()
                if env != ENVELOPE_VERSION or base + tell() != end:
                    raise ValueError(env)
            except Exception:
                self.malformed += 1
                unpacker = _Unpacker(raw=False, strict_map_key=False)
                unpacker.feed(memoryview(body)[end:])
                unpack, tell = unpacker.unpack, unpacker.tell
                base = end
            else:  # built as in decode(), inlined: a shared helper costs a call per event
                event = _new_event(Event)
                _set_dict(
                    event,
                    "__dict__",
                    {
                        "type": event_type,
                        "payload": payload,
                        "version": version,
                        "ts": ts,
                        "source": source,
                        "session_id": session_id,
                        "seq": topic_seq,
                    },
                )
                append(event)
                good += 1
            version += 1
            topic_seq += 1
        self.received += good

    def decode(self, topic: bytes, stamp: bytes, body: bytes) -> Event | None:
        """The Event of a single-event message, or None: filtered out, control, malformed, or held."""
        try:
            version, topic_seq = _unpack_stamp(stamp)
        except struct.error:
            self.malformed += 1
            return None
        if not version:  # a control message (sync reply): no sequence to track
            return None
        last_topic_seq = self.last_topic_seq
        last = last_topic_seq.get(topic)
        if last is not None and topic_seq != last + 1:
            self.held = (topic, stamp, body)
            return None
        last_topic_seq[topic] = topic_seq
        if not self.matches(topic):
            return None
        try:
            env, ts, source, session_id, payload = _unpackb(body, raw=False, strict_map_key=False)
            if env != ENVELOPE_VERSION:
                raise ValueError(env)
            event_type = self._names.get(topic) or self._name(topic)
        except Exception:
            self.malformed += 1
            return None
        self.received += 1
        event = _new_event(Event)  # one dict instead of seven frozen setattrs: ~half the cost
        _set_dict(
            event,
            "__dict__",
            {
                "type": event_type,
                "payload": payload,
                "version": version,
                "ts": ts,
                "source": source,
                "session_id": session_id,
                "seq": topic_seq,
            },
        )
        return event

    def feed_each(self, topic: bytes, stamp: bytes, body: bytes, append: Append) -> None:
        """``feed`` for decoders that override ``decode``: a run is taken apart and each of its
        events decoded on its own (slower, for the cold paths: the seam and recovery)."""
        try:
            pieces = split_run(stamp, body)
        except MalformedEvent:
            self.malformed += 1
            return
        decode = self.decode
        for version, topic_seq, one in pieces:
            event = decode(topic, STAMP.pack(version, topic_seq), one)
            if self.held is not None:  # a gap shows at a run's first event: hold all of it
                self.held = (topic, stamp, body)
                return
            if event is not None:
                append(event)

    # -- the cold paths ----------------------------------------------------------------------

    def resolve(self, append: Append) -> Resolve:
        """Settle the held message's gap, then decode it (a flow; see :mod:`sdk.core.flows`).

        A sequence going backwards means a new broker (every topic restarts at 1); a forward jump
        is lost events, or a new broker whose sequence already passed ours: the broker is asked
        which run it is. After a restart the old sequences are forgotten, ``restarts`` counts it,
        and only the events of this topic the new broker stamped before this one are known lost.
        What the old broker stamped but never delivered has no sequence left to show it:
        ``policy="recover"`` fetches it from the event log by version.

        Raises:
            SlowSubscriberError: events were lost and the policy is ``drop`` (the held message is
                not delivered then).
        """
        assert self.held is not None
        topic, stamp, body = self.held
        self.held = None
        topic_seq = _unpack_stamp(stamp[:16])[1]
        last = self.last_topic_seq.get(topic, 0)
        try:
            epoch: int | None = broker_epoch((yield Ask("control", PING)))
        except BusError:
            epoch = None
        if topic_seq <= last:
            restarted, self.epoch = True, epoch  # unknown after no answer: learnt at the next look
        else:
            restarted = epoch is not None and self._new_epoch(epoch)
        if restarted:
            self.restarts += 1
            self.last_topic_seq.clear()
            lost = topic_seq - 1
        else:
            lost = topic_seq - last - 1
        self.last_topic_seq[topic] = topic_seq - 1
        if lost:
            self.lost += lost
            if self.policy == "drop":
                raise SlowSubscriberError(lost, topic.decode("utf-8", "replace"))
        self.feed(topic, stamp, body, append)

    def first_look(self) -> Resolve:
        """Right after the handshake: learn which broker (run) we are listening to."""
        try:
            self.epoch = broker_epoch((yield Ask("control", PING)))
        except BusError:
            pass

    def idle(self, now: float, left: float, append: Append) -> Resolve | None:
        """The flow to run while no event arrives (``left``: seconds until the receive's deadline),
        or None: at most every IDLE_LOOK seconds, ask whether this is still the same broker.

        A broker that restarted while this subscription was reconnecting numbers every topic from 1
        again, and its first events may go out before we are back. If the first one we then get
        happens to carry the next number after the last we saw, no gap shows; so a new broker seen
        here sets every topic's last sequence to 0, and the next event of each topic shows how many
        of its events the new broker stamped before we were back (``lost``, or SlowSubscriberError
        under ``drop``, as for any gap).
        """
        if left <= 0 or now < self._next_look:
            return None
        self._next_look = now + IDLE_LOOK
        return self._look(min(IDLE_LOOK_TIMEOUT, left))

    def _look(self, timeout: float) -> Resolve:
        try:
            reply = yield Ask("control", PING, timeout=timeout, retries=0)
        except BusError:  # no answer: looked at again later
            return
        self.looked(broker_epoch(reply))

    def looked(self, epoch: int) -> None:
        """The broker's answer to an idle look: a new broker's ``epoch`` counts a restart and sets
        every topic's last sequence to 0."""
        if self._new_epoch(epoch):
            self.restarts += 1
            last_topic_seq = self.last_topic_seq
            for topic in last_topic_seq:
                last_topic_seq[topic] = 0

    def _new_epoch(self, epoch: int) -> bool:
        restarted = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        return restarted

    def _name(self, topic: bytes) -> str:
        name = topic.decode("utf-8")
        if len(self._names) < 10_000:
            self._names[topic] = name
        return name


class FloorDecoder(EventDecoder):
    """Decoder of a ``subscribe(since=)``: drops live events at or below ``floor`` (the seam put
    them in front from the log)."""

    floor = 0

    feed = EventDecoder.feed_each

    def decode(self, topic: bytes, stamp: bytes, body: bytes) -> Event | None:
        event = EventDecoder.decode(self, topic, stamp, body)
        if event is not None and event.version <= self.floor:
            self.received -= 1
            return None
        return event

    def set_floor(self, floor: int) -> None:
        """Every event up to ``floor`` came from the log."""
        self.floor = floor


class RecoveringDecoder(EventDecoder):
    """Decoder of a ``policy="recover"`` subscription: fills version gaps from the event log.

    It subscribes to every event (``prefixes = [b""]``) because versions are contiguous only over
    the whole stream; filtering by pattern happens here. A gap's events are appended, in version
    order, ahead of the event that revealed it.
    """

    def __init__(self, patterns: tuple[str, ...], *, timeout: float) -> None:
        super().__init__(patterns, "count")
        self.policy = "recover"
        self.patterns = patterns
        self.prefixes = [b""]
        self.timeout = timeout
        """Longest a gap fill waits for the log to reach the versions it needs."""
        self.last_version: int | None = None

    feed = EventDecoder.feed_each

    def decode(self, topic: bytes, stamp: bytes, body: bytes) -> Event | None:
        """The next event in version order, or None (filtered out, malformed, a duplicate, held)."""
        if len(stamp) != 16:
            self.malformed += 1
            return None
        version, topic_seq = _unpack_stamp(stamp)
        last = self.last_version
        if last is not None and version <= last:
            return None  # delivered already (from the log at the seam, or by a catch-up)
        if last is not None and version != last + 1:
            self.held = (topic, stamp, body)
            return None
        self.last_version = version
        self.last_topic_seq[topic] = topic_seq
        if not self.matches(topic):
            return None
        try:
            ts, source, session_id, payload = decode_body(body)
            event_type = topic.decode("utf-8")
        except (MalformedEvent, UnicodeDecodeError):
            self.malformed += 1
            return None
        self.received += 1
        return Event(event_type, payload, version, ts, source, session_id, topic_seq)

    def set_floor(self, floor: int) -> None:
        """Every event up to ``floor`` came from the log."""
        self.last_version = floor

    def resolve(self, append: Append) -> Resolve:
        """Fetch the held message's gap from the log, page by page, then decode it (a flow).

        Raises:
            SlowSubscriberError: the log could not supply the gap (it lost them too, or is down).
        """
        assert self.held is not None and self.last_version is not None
        topic, stamp, body = self.held
        self.held = None
        version = _unpack_stamp(stamp[:16])[0]
        try:
            yield from self._fetch(self.last_version, version - 1, append)
        except (BusTimeout, BusUnavailable) as e:
            lost = version - 1 - self.last_version
            self.lost += lost
            raise SlowSubscriberError(lost, topic.decode("utf-8", "replace")) from e
        self.feed(topic, stamp, body, append)

    def idle(self, now: float, left: float, append: Append) -> Resolve | None:
        """While idle: fetch what the broker stamped after our last event (a loss at the very end of
        a burst shows no gap until the next event arrives). Live copies of what is fetched arrive
        later and are dropped as duplicates; failures are left to the next gap."""
        if self.last_version is None:
            return None  # nothing received: nothing was queued, so nothing was dropped
        return self._catch_up(append)

    def first_look(self) -> Resolve:
        """A recovering subscription follows versions, not runs: nothing to learn."""
        return
        yield  # a generator with no step

    def _catch_up(self, append: Append) -> Resolve:
        try:
            version, stamped = broker_position((yield Ask("control", PING)))
            if stamped and self.last_version is not None and version > self.last_version:
                yield from self._fetch(self.last_version, version, append)
        except (BusTimeout, BusUnavailable):
            pass

    def _fetch(self, after: int, through: int, append: Append) -> Resolve:
        """Append the logged events ``after < version <= through`` matching, page by page; each
        page moves ``last_version`` on, so a fill cut short keeps what it delivered."""

        def take(rows: list[Any], scanned: int) -> None:
            for row in rows:
                append(event_of_row(row))
            self.recovered += len(rows)
            self.received += len(rows)
            self.last_version = max(self.last_version or 0, min(scanned, through))

        request = replay_request(self.patterns, since=after, until=through)
        yield from log_pages(request, wait=True, timeout=self.timeout, on_page=take)
        self.last_version = max(self.last_version or 0, through)



def decoder_for(patterns: tuple[str, ...], policy: Policy, *, since: int | None, timeout: float) -> EventDecoder:
    """The decoder a subscription with these options uses (chosen once, never swapped).

    Raises:
        ValueError: an unknown policy.
    """
    if policy == "recover":
        return RecoveringDecoder(patterns, timeout=timeout)
    if since is not None:
        return FloorDecoder(patterns, policy)
    return EventDecoder(patterns, policy)
