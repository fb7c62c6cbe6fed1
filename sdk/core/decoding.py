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
import time
from collections.abc import Callable
from typing import Any, Literal

import msgpack

from schemas.envelope import (
    ENVELOPE_VERSION,
    NUMBER_MASK,
    SESSION_PREFIX,
    STAMP,
    Envelope,
    MalformedEvent,
    decode_row,
    session_head,
    split_run,
)
from schemas.fragments import FRAGMENT, Fragments, is_fragment
from schemas.topics import MAX_PREFIX, compile_matcher, zmq_prefixes
from sdk.core.flows import PING, Ask, Filter, Flow, Receive, broker_epoch, seqs_chunks, seqs_request, sync_token
from sdk.errors import BusError, SlowSubscriberError
from sdk.event import Event

Policy = Literal["drop", "count", "recover"]
POLICIES = ("drop", "count", "recover")

IDLE_LOOK = 1.0
"""Seconds between two questions to the broker, while no event arrives, about whether it restarted."""
IDLE_LOOK_TIMEOUT = 0.2
"""Longest such a question may hold up a receive (a broker that does not answer is looked at later)."""
TAIL_LOOK = 0.5
"""Seconds between two looks for a lost tail (PROTOCOL.md §9), made while the queue is dry and only
if events arrived since the last one; such a look also answers the idle question above."""
TAIL_LOOK_TIMEOUT = 0.4
"""Longest a look for a lost tail may hold up a receive (one left unproven is made again later)."""

Append = Callable[[Event], None]
Resolve = Flow[None]

SLICE_FROM = 512
"""Runs whose bodies average this many bytes or more are decoded body by body from slices of the
message (no copy of the run); smaller ones by one streaming unpacker (fewer calls per event)."""
_unpack_stamp = STAMP.unpack
_unpack_fragment = FRAGMENT.unpack
_unpack_run = struct.unpack
_unpackb = msgpack.unpackb
_Unpacker = msgpack.Unpacker
_new_event = object.__new__


def unwrap(head: bytes, frames: list[bytes]) -> list[bytes]:
    """A session stream's message as a plain one (its topic without ``head``, its stamp without the
    pad: PROTOCOL.md §5.1); any other message as it is."""
    if head and len(frames) == 3 and frames[0][:2] == SESSION_PREFIX:
        return [frames[0][len(head) :], frames[1][8:], frames[2]]
    return frames


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
        envelope.publisher,
    )


def event_of_row(row: list[Any]) -> Event:
    """The Event of one log row ``[version, topic_seq, type, body]``.

    Raises:
        MalformedEvent: the row does not follow the layout.
    """
    return event_of(decode_row(row))


class EventDecoder:
    """Decoder of a ``drop`` or ``count`` subscription: exact loss detection by topic sequence."""

    def __init__(self, patterns: tuple[str, ...], policy: Policy, session_id: str | None = None) -> None:
        if policy not in ("drop", "count"):
            raise ValueError(f"policy must be 'drop' or 'count' here, not {policy!r}")
        self.matches: Callable[[bytes], bool] = compile_matcher(patterns)
        self.session_id = session_id
        self.head = b"" if session_id is None else session_head(session_id)
        """What the topics of this subscription's session stream start with (PROTOCOL.md §5.1):
        the fronts cut it (and the stamp's pad) off before the decoder sees a message."""
        self.prefixes = [(self.head + p)[:MAX_PREFIX] for p in zmq_prefixes(patterns)]
        self.patterns = patterns
        self.policy: Policy = policy
        self.last_topic_seq: dict[bytes, int] = {}
        self.lost = 0
        self.malformed = 0
        self.received = 0
        self.restarts = 0
        self.recovered = 0
        self.fragments = Fragments()
        """An event delivered in fragments (schemas/fragments.py), while they arrive."""
        self.parts = 0
        """Fragments received: a queue that dropped some of an event's leaves no event to count,
        so they too make a look for a lost tail due."""
        self.held: tuple[bytes, bytes, bytes] | None = None
        """A message that does not follow on, kept back until ``resolve`` settles the gap."""
        self.epoch: int | None = None
        """The broker's ``first_version`` when last asked: a new value means a new broker."""
        self.base: dict[bytes, int] | None = None
        """Each matching topic's sequence when the subscription started (None: unknown, or more
        than one ``seqs`` page): a topic with no event received since is short of the broker's
        sequence by what it lost of that topic."""
        self.busy = False
        """A flow is half done (a recover fill, a page at a time): run ``resolve`` again before
        reading on."""
        self._names: dict[bytes, str] = {}
        self._next_look = 0.0
        self._next_tail = 0.0
        self._seen = 0  # ``received`` at the last look for a lost tail
        self._parts_seen = 0  # ``parts`` then

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
            if is_fragment(topic, stamp):
                whole = self.fragment(topic, stamp, body)
                if whole is not None:
                    self.feed(*whole, append)
            return
        n = len(sizes)
        last_topic_seq = self.last_topic_seq
        last = last_topic_seq.get(topic)
        if last is None:
            if self._head_lost(topic, topic_seq):
                self.held = (topic, stamp, body)
                return
        elif topic_seq != last + 1:
            self.held = (topic, stamp, body)
            return
        last_topic_seq[topic] = topic_seq + n - 1
        if not self.matches(topic):
            return
        if sum(sizes) != len(body):
            self.malformed += n
            return
        event_type = self._names.get(topic) or self._name(topic)
        if len(body) >= SLICE_FROM * n:
            self._feed_slices(event_type, version, topic_seq, sizes, body, append)
            return
        # One streaming unpacker for the run; each body must end exactly at its length, so a
        # malformed body is counted alone and decoding starts over at the next one.
        unpacker = _Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(body)
        unpack, tell = unpacker.unpack, unpacker.tell
        base = end = good = 0
        for size in sizes:
            end += size
            try:
                fields = unpack()
                if len(fields) == 5:
                    env, ts, source, session_id, payload = fields
                    publisher = None
                else:  # identified (PROTOCOL.md §4.1)
                    env, ts, source, session_id, payload, pid, number = fields
                    publisher = (pid, number & NUMBER_MASK)
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
                state = event.__dict__
                state["type"] = event_type
                state["payload"] = payload
                state["version"] = version
                state["ts"] = ts
                state["source"] = source
                state["session_id"] = session_id
                state["seq"] = topic_seq
                state["publisher"] = publisher
                append(event)
                good += 1
            version += 1
            topic_seq += 1
        self.received += good

    def _feed_slices(
        self, event_type: str, version: int, topic_seq: int, sizes: list[int], body: bytes, append: Append
    ) -> None:
        """``feed``'s loop for a run of big bodies: each body decoded from a view of its own bytes
        (an unpacker would first copy the whole run into its buffer); one that does not end
        exactly at its length is malformed, counted alone."""
        view = memoryview(body)
        pos = good = 0
        for size in sizes:
            end = pos + size
            try:
                fields = _unpackb(view[pos:end], raw=False, strict_map_key=False)
                if len(fields) == 5:
                    env, ts, source, session_id, payload = fields
                    publisher = None
                else:  # identified (PROTOCOL.md §4.1)
                    env, ts, source, session_id, payload, pid, number = fields
                    publisher = (pid, number & NUMBER_MASK)
                if env != ENVELOPE_VERSION:
                    raise ValueError(env)
            except Exception:
                self.malformed += 1
            else:
                event = _new_event(Event)
                state = event.__dict__
                state["type"] = event_type
                state["payload"] = payload
                state["version"] = version
                state["ts"] = ts
                state["source"] = source
                state["session_id"] = session_id
                state["seq"] = topic_seq
                state["publisher"] = publisher
                append(event)
                good += 1
            pos = end
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
        if last is None:
            if self._head_lost(topic, topic_seq):
                self.held = (topic, stamp, body)
                return None
        elif topic_seq != last + 1:
            self.held = (topic, stamp, body)
            return None
        last_topic_seq[topic] = topic_seq
        if not self.matches(topic):
            return None
        try:
            fields = _unpackb(body, raw=False, strict_map_key=False)
            if len(fields) == 5:
                env, ts, source, session_id, payload = fields
                publisher = None
            else:  # identified (PROTOCOL.md §4.1)
                env, ts, source, session_id, payload, pid, number = fields
                publisher = (pid, number & NUMBER_MASK)
            if env != ENVELOPE_VERSION:
                raise ValueError(env)
            event_type = self._names.get(topic) or self._name(topic)
        except Exception:
            self.malformed += 1
            return None
        self.received += 1
        event = _new_event(Event)
        state = event.__dict__  # filled in place: no frozen setattrs, keys shared with the class
        state["type"] = event_type
        state["payload"] = payload
        state["version"] = version
        state["ts"] = ts
        state["source"] = source
        state["session_id"] = session_id
        state["seq"] = topic_seq
        state["publisher"] = publisher
        return event

    def feed_each(self, topic: bytes, stamp: bytes, body: bytes, append: Append) -> None:
        """``feed`` for decoders that override ``decode``: a run is taken apart and each of its
        events decoded on its own (slower, for the cold paths: the seam and recovery)."""
        if is_fragment(topic, stamp):
            whole = self.fragment(topic, stamp, body)
            if whole is not None:
                self.feed_each(*whole, append)
            return
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

    def fragment(self, topic: bytes, stamp: bytes, body: bytes) -> tuple[bytes, bytes, bytes] | None:
        """Take one fragment (schemas/fragments.py): the whole event's message once its last one is
        in, else None. A fragment is a message received, as a whole event would have been: the
        first of its topic starts the topic's sequence (:meth:`begin`), and it makes a look for a
        lost tail due, so that an event whose other fragments a full queue dropped shows as lost."""
        self.parts += 1
        _, version, topic_seq, _index, _count = _unpack_fragment(stamp)
        self.begin(topic, version, topic_seq)
        return self.fragments.take(topic, stamp, body)

    def begin(self, topic: bytes, version: int, topic_seq: int) -> None:
        """A fragment of event (``version``, ``topic_seq``) arrived: a topic with nothing received
        yet follows on from there (or from ``base``, if that is lower: what came before was lost)."""
        last_topic_seq = self.last_topic_seq
        if topic not in last_topic_seq:
            start = topic_seq - 1
            if self.base is not None and self.matches(topic):
                start = min(start, self.base.get(topic, 0))
            last_topic_seq[topic] = start

    def _head_lost(self, topic: bytes, topic_seq: int) -> bool:
        """The first event received of a matching ``topic`` does not follow on from where the topic
        was when the subscription started (``base``): the ones between were lost (a gap to settle).
        A topic no pattern matches is in no ``base``: nothing is known of it."""
        base = self.base
        return base is not None and topic_seq > base.get(topic, 0) + 1 and self.matches(topic)

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
        last = self.last_topic_seq.get(topic)
        if last is None:  # the first of its topic, after events lost since the start (base)
            last = self.base.get(topic, 0) if self.base is not None else 0
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
            self.base = {}
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
        """Right after the handshake: learn which broker (run) we are listening to, and the
        matching topics' sequences (``base``) if they fit in one page."""
        base: dict[bytes, int] = {}
        whole = True
        try:
            for chunk in seqs_chunks(self.patterns):
                reply = yield Ask("control", seqs_request(chunk, session_id=self.session_id))
                whole = whole and reply.get("next") is None
                for topic, seq in reply["seqs"].items():
                    base[topic.encode()] = max(seq, base.get(topic.encode(), 0))
        except BusError:
            return
        self.epoch = broker_epoch(reply)
        if whole:
            self.base = base

    def idle(self, now: float, left: float, append: Append) -> Resolve | None:
        """The flow to run while no event arrives (``left``: seconds until the receive's deadline),
        or None: at most every IDLE_LOOK seconds, ask whether this is still the same broker.

        A broker that restarted while this subscription was reconnecting numbers every topic from 1
        again, and its first events may go out before we are back. If the first one we then get
        happens to carry the next number after the last we saw, no gap shows; so a new broker seen
        here sets every topic's last sequence to 0, and the next event of each topic shows how many
        of its events the new broker stamped before we were back (``lost``, or SlowSubscriberError
        under ``drop``, as for any gap).

        A subscription that received events (or fragments: an event whose other fragments were
        dropped leaves nothing else) since the last look asks instead, every TAIL_LOOK seconds at
        most, for the tail it may have lost (:meth:`tail_look`): one question for both.
        """
        if left <= 0:
            return None
        if (self.received != self._seen or self.parts != self._parts_seen) and now >= self._next_tail:
            self._next_tail = now + TAIL_LOOK
            self._next_look = now + IDLE_LOOK
            return self.tail_look(min(TAIL_LOOK_TIMEOUT, left), append)
        if now < self._next_look:
            return None
        self._next_look = now + IDLE_LOOK
        return self._look(min(IDLE_LOOK_TIMEOUT, left))

    def tail_look(self, timeout: float, append: Append) -> Resolve:
        """See whether the tail of what the broker sent was lost (PROTOCOL.md §9), exactly.

        A loss shows as a gap only when a later event of the topic arrives; a burst's lost tail
        shows nothing while the topic stays quiet. So: ask the broker for the current sequence of
        every matching topic (``seqs``), then prove in band that everything it stamped before that
        answer has reached us or was dropped on the way (a sync token on the data socket, answered
        after all it sent before), decoding what arrives meanwhile. A topic whose last received
        sequence is still short of the broker's lost its tail. Unanswered or unproven within
        ``timeout``: no conclusion, looked at again later.

        Raises:
            SlowSubscriberError: events were lost and the policy is ``drop``.
        """
        deadline = time.monotonic() + timeout
        seen, parts = self.received, self.parts  # what this look covers, once it concludes
        seqs: dict[str, int] = {}
        try:
            for chunk in seqs_chunks(self.patterns):  # a topic two groups match: either answer holds
                request = seqs_request(chunk, session_id=self.session_id)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    reply = yield Ask("control", request, timeout=left, retries=0)
                    for topic, seq in reply["seqs"].items():
                        seqs[topic] = max(seq, seqs.get(topic, 0))
                    if reply.get("next") is None:
                        break
                    request = seqs_request(chunk, reply["next"], self.session_id)
        except BusError:  # no answer (or a broker without ``seqs``): looked at again later
            return
        self.looked(broker_epoch(reply))
        token = sync_token()
        yield Filter(token, True)
        try:
            while True:
                frames = yield Receive(deadline)
                if frames is None:
                    return  # not proven in time: no conclusion
                if len(frames) != 3:
                    self.malformed += 1
                    continue
                topic, stamp, body = frames
                if topic == token:
                    break
                if topic[:1] != b"\x00":
                    self.feed(topic, stamp, body, append)
                    if self.held is not None:
                        yield from self.resolve(append)
        finally:
            yield Filter(token, False)
        self._seen, self._parts_seen = seen, parts
        self._tail_lost(seqs)

    def _tail_lost(self, seqs: dict[str, int]) -> None:
        """Count what each topic's last received sequence is short of the broker's ``seqs`` (all
        of it reached us or was dropped), and move the last sequence up to it."""
        last_topic_seq, base = self.last_topic_seq, self.base
        lost, first = 0, ""
        for name, seq in seqs.items():
            topic = name.encode()
            last = last_topic_seq.get(topic)
            if last is None:  # nothing received of it: short of where it was when we started
                if base is None:
                    continue
                last = base.get(topic, 0)
            if seq > last:
                lost += seq - last
                first = first or name
                last_topic_seq[topic] = seq
        if lost:
            self.lost += lost
            if self.policy == "drop":
                raise SlowSubscriberError(lost, first)

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
            self.base = {}  # the new broker numbered every topic from 1
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
