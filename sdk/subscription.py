"""A live subscription: one SUB socket, its patterns, and exact loss detection by topic sequence."""

from __future__ import annotations

import math
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import msgpack
import zmq

from schemas.envelope import ENVELOPE_VERSION, STAMP, SYNC_PREFIX, MalformedEvent, split_run
from schemas.topics import compile_matcher, zmq_prefixes
from sdk.errors import BusClosed, BusError, BusTimeout, BusUnavailable, SlowSubscriberError
from sdk.event import Event
from sdk.transport import event_socket

if TYPE_CHECKING:
    from sdk.bus import Bus

Policy = Literal["drop", "count", "recover"]
POLICIES = ("drop", "count", "recover")
_DECODER_POLICIES = ("drop", "count")  # "recover" is sdk.replay.RecoveringDecoder

_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_unpack_stamp = STAMP.unpack
_pack_stamp = STAMP.pack
_unpack_run = struct.unpack
_unpackb = msgpack.unpackb
_Unpacker = msgpack.Unpacker
_new_event = object.__new__
_set_dict = object.__setattr__

_SLICE_MS = 100  # how often a blocked receive looks whether the subscription was closed
IDLE_LOOK = 1.0
"""Seconds between two questions to the broker, while no event arrives, about whether it restarted."""
IDLE_LOOK_TIMEOUT = 0.2
"""Longest such a question may hold up a receive (a broker that does not answer is looked at later)."""
_DRAIN = 256  # messages decoded per turn of recv(): one lock and one deadline for all of them


EPOCH_QUESTION = {"op": "ping"}
"""The control request whose reply names the broker's ``first_version`` (which run it is)."""


def broker_epoch(reply: dict[str, Any]) -> int:
    """The broker's ``first_version`` in a ping reply: another value means another broker."""
    return int(reply.get("first_version", 1))


class EventDecoder:
    """Turns delivered frames into Events, filters by pattern and tracks per-topic sequences.

    Shared by the sync and asyncio subscriptions; holds no socket.
    """

    def __init__(self, patterns: tuple[str, ...], policy: Policy) -> None:
        if policy not in _DECODER_POLICIES:
            raise ValueError(f"policy must be one of {_DECODER_POLICIES}, not {policy!r}")
        self.matches: Callable[[bytes], bool] = compile_matcher(patterns)
        self.prefixes = zmq_prefixes(patterns)
        self.policy = policy
        self.last_seq: dict[bytes, int] = {}
        self.lost = 0
        self.malformed = 0
        self.received = 0
        self.restarts = 0
        self._names: dict[bytes, str] = {}
        self.epoch: int | None = None
        """The broker's ``first_version`` when last asked: a new value means a new broker."""
        self.probe: Callable[[], int] | None = None
        """Asks the broker for its ``first_version`` (only on a gap, never per event)."""
        self.idle_probe: Callable[[float], int] | None = None
        """The same question with a short timeout, asked while no event arrives (look_for_restart)."""
        self._next_look = 0.0

    def feed(self, topic: bytes, stamp: bytes, body: bytes, append: Callable[[Event], None]) -> None:
        """Decode one delivered message, a single event or a run (PROTOCOL.md), and append its
        matching events in order.

        Raises:
            SlowSubscriberError: the sequence shows lost events and the policy is ``drop``
                (nothing of this message is appended then).
        """
        if len(stamp) == 16:
            event = self.decode(topic, stamp, body)
            if event is not None:
                append(event)
            return
        try:
            version, seq, *sizes = _unpack_run(f"!QQ{(len(stamp) - 16) >> 2}I", stamp)
        except struct.error:
            self.malformed += 1
            return
        if not version:
            return
        n = len(sizes)
        last_seq = self.last_seq
        last = last_seq.get(topic)
        last_seq[topic] = seq + n - 1
        if last is not None and seq != last + 1:
            self._gap(topic, last, seq)
            last_seq[topic] = seq + n - 1  # a restart resets the sequences: keep this run's
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
                        "seq": seq,
                    },
                )
                append(event)
                good += 1
            version += 1
            seq += 1
        self.received += good

    def feed_each(self, topic: bytes, stamp: bytes, body: bytes, append: Callable[[Event], None]) -> None:
        """``feed`` for decoders that override ``decode``: a run is taken apart and each of its
        events decoded on its own (slower, for the cold paths: the seam and recovery)."""
        try:
            pieces = split_run(stamp, body)
        except MalformedEvent:
            self.malformed += 1
            return
        decode = self.decode
        for version, seq, one in pieces:
            event = decode(topic, _pack_stamp(version, seq), one)
            if event is not None:
                append(event)

    def decode(self, topic: bytes, stamp: bytes, body: bytes) -> Event | None:
        """The Event for these frames, or None if it is filtered out, control or malformed.

        Raises:
            SlowSubscriberError: the sequence shows lost events and the policy is ``drop``.
        """
        try:
            version, seq = _unpack_stamp(stamp)
        except struct.error:
            self.malformed += 1
            return None
        if not version:  # a control message (sync reply): no sequence to track
            return None
        last_seq = self.last_seq
        last = last_seq.get(topic)
        last_seq[topic] = seq
        if last is not None and seq != last + 1:
            self._gap(topic, last, seq)
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
                "seq": seq,
            },
        )
        return event

    def _gap(self, topic: bytes, last: int, seq: int) -> None:
        """A sequence that does not follow on: lost events, or a restarted broker.

        A sequence going backwards means a new broker (every topic restarts at 1): the old
        sequences are forgotten, ``restarts`` counts it, and only the events of this topic the new
        broker stamped before this one (``seq - 1``) are known lost. What the old broker stamped
        but never delivered has no sequence left to show it: ``policy="recover"`` fetches it from
        the event log by version.

        Raises:
            SlowSubscriberError: events were lost and the policy is ``drop``.
        """
        if seq > last and not self._broker_restarted():
            lost = seq - last - 1
        else:
            if seq <= last:
                self._broker_restarted()  # learn the new broker's epoch for the next gap
            self.restarts += 1
            self.last_seq.clear()
            self.last_seq[topic] = seq
            lost = seq - 1
            if not lost:
                return
        self.lost += lost
        if self.policy == "drop":
            raise SlowSubscriberError(lost, topic.decode("utf-8", "replace"))

    def look_for_restart(self, now: float, timeout: float) -> None:
        """While no event arrives, at most every IDLE_LOOK seconds: is this still the same broker?

        A broker that restarted while this subscription was reconnecting numbers every topic from 1
        again, and its first events may go out before we are back. If the first one we then get
        happens to carry the next number after the last we saw, no gap shows; so a new broker seen
        here sets every topic's last sequence to 0, and the next event of each topic shows how many
        of its events the new broker stamped before we were back (``lost``, or SlowSubscriberError
        under ``drop``, as for any gap).
        """
        idle_probe = self.idle_probe
        if idle_probe is None or not self.look_due(now):
            return
        try:
            epoch = idle_probe(timeout)
        except BusError:  # no answer: looked at again later
            return
        self.looked(epoch)

    def look_due(self, now: float) -> bool:
        """Whether an idle look is due (at most every IDLE_LOOK seconds); if so, the next is planned."""
        if now < self._next_look:
            return False
        self._next_look = now + IDLE_LOOK
        return True

    def looked(self, epoch: int) -> None:
        """The broker's answer to an idle look (see look_for_restart): a new broker's ``epoch``
        counts a restart and sets every topic's last sequence to 0."""
        if self._new_epoch(epoch):
            self.restarts += 1
            last_seq = self.last_seq
            for topic in last_seq:
                last_seq[topic] = 0

    def _broker_restarted(self, ask: Callable[[], int] | None = None) -> bool:
        """Whether the broker (asked with ``ask``, by default ``probe``) is another one than when
        last asked. A forward jump may also be a new broker whose sequence already passed ours.
        With no way to ask (an asyncio subscription), the epoch becomes unknown: the next idle look
        learns it without counting a restart the sequences may already have shown."""
        ask = ask or self.probe
        if ask is None:
            self.epoch = None
            return False
        try:
            epoch = ask()
        except BusError:
            return False
        return self._new_epoch(epoch)

    def _new_epoch(self, epoch: int) -> bool:
        restarted = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        return restarted

    def _name(self, topic: bytes) -> str:
        name = topic.decode("utf-8")
        if len(self._names) < 10_000:
            self._names[topic] = name
        return name


def sync_token() -> bytes:
    """A fresh sync topic: the broker answers a subscription to it on the same connection."""
    return SYNC_PREFIX + uuid.uuid4().hex.encode()



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

class Subscription:
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
    ) -> None:
        self.patterns = patterns
        self._pending: deque[Event] = deque()
        self._decoder: EventDecoder
        if policy == "recover":  # gaps are filled from the event log (sdk/replay.py)
            from sdk.replay import recovering_decoder

            self._decoder = recovering_decoder(patterns, bus, self._pending)
            self._catch_up: Callable[[], Event | None] | None = self._decoder.catch_up
        else:
            self._decoder = EventDecoder(patterns, policy)
            self._decoder.probe = lambda: broker_epoch(bus.control.call(EPOCH_QUESTION))
            self._decoder.idle_probe = lambda timeout: broker_epoch(
                bus.control.call(EPOCH_QUESTION, timeout=timeout, retries=0)
            )
            self._catch_up = None
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
            for prefix in self._decoder.prefixes:
                sock.subscribe(prefix)
            self._await_live(timeout)
            if self._decoder.probe is not None:  # which broker we are listening to (see _gap)
                self._decoder._broker_restarted()
        except BaseException:
            sock.close(linger=0)
            raise

    def _await_live(self, timeout: float) -> None:
        """Return once the broker has our filters: it answers a sync subscription sent after them."""
        token = sync_token()
        self._sock.subscribe(token)
        deadline = time.monotonic() + timeout
        recv, feed = self._sock.recv, self._decoder.feed
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1, _POLLIN):
                raise BusUnavailable(
                    f"the broker at {self._bus.endpoints.subscribe} did not confirm the subscription"
                    f" within {timeout:g}s (is it running?)"
                )
            topic, stamp, body = recv(), recv(), recv()
            if topic == token:
                break
            if topic[:1] != b"\x00":  # an event that arrived before the sync reply: keep it
                feed(topic, stamp, body, self._pending.append)
        self._sock.unsubscribe(token)

    # -- receiving ---------------------------------------------------------------------------

    @property
    def lost(self) -> int:
        """Events lost so far (with ``policy="count"``; with ``"drop"`` the first loss ends it)."""
        return self._decoder.lost

    @property
    def recovered(self) -> int:
        """Events fetched from the event log to fill gaps (``policy="recover"`` only)."""
        return getattr(self._decoder, "recovered", 0)

    @property
    def restarts(self) -> int:
        """Broker restarts this subscription rode through (seen as a topic sequence starting over)."""
        return self._decoder.restarts

    @property
    def malformed(self) -> int:
        """Delivered messages that could not be decoded and were skipped."""
        return self._decoder.malformed

    @property
    def closed(self) -> bool:
        return self._closed

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
            while True:
                if pending:  # filled by _drain, or by the recover policy's log fetches
                    return pending.popleft()
                if self._failed is not None:
                    raise self._failed
                if self._drain():
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
                if not self._sock.poll(wait_ms, _POLLIN):  # idle
                    if self._catch_up is not None:
                        event = self._catch_up()  # did we lose the newest events?
                        if event is not None:
                            return event
                    else:
                        now = time.monotonic()
                        left = IDLE_LOOK_TIMEOUT if deadline is None else deadline - now
                        if left > 0:
                            self._decoder.look_for_restart(now, min(IDLE_LOOK_TIMEOUT, left))

    def _drain(self) -> int:
        """Decode what has already arrived (up to _DRAIN messages) into the pending queue.

        Returns how many messages were read. A loss under ``policy="drop"`` ends the
        subscription after the events that came before it have been queued.
        """
        recv, decoder, append = self._sock.recv, self._decoder, self._pending.append
        decode, feed = decoder.decode, decoder.feed
        n = 0
        for n in range(1, _DRAIN + 1):
            try:
                topic = recv(_NOBLOCK)
            except zmq.Again:
                return n - 1
            stamp = recv()
            body = recv()
            try:
                if len(stamp) == 16:
                    event = decode(topic, stamp, body)
                    if event is not None:
                        append(event)
                else:
                    feed(topic, stamp, body, append)
            except SlowSubscriberError as e:
                self._failed = e
                self._close_socket()
                return n
            if n == 1 and not self._sock.getsockopt(_EVENTS) & _POLLIN:
                return 1  # it came alone: deliver it now, no Again raised and caught first (~1 us less)
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
