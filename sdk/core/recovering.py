"""The decoder of a ``policy="recover"`` subscription: every event in version order, exactly once,
gaps filled from the event log a page at a time, and only what the log has (see
:class:`RecoveringDecoder`)."""

from __future__ import annotations

import time
from collections import deque

from schemas.envelope import DURABLE, DURABLE_MARK, STAMP, MalformedEvent, decode_body, publisher_of
from schemas.topics import EVERY_TYPE
from sdk.core.decoding import IDLE_LOOK_TIMEOUT, TAIL_LOOK, Append, EventDecoder, Resolve, event_of_row
from sdk.core.flows import LOG_WAIT, PAGE, PING, Ask, Sleep, broker_epoch, broker_position, replay_request
from sdk.errors import BusError, BusTimeout, BusUnavailable, SlowSubscriberError
from sdk.event import Event

_unpack_stamp = STAMP.unpack


class RecoveringDecoder(EventDecoder):
    """Decoder of a ``policy="recover"`` subscription: fills version gaps from the event log, and
    delivers only what the log has (read-committed).

    It subscribes to every type (EVERY_TYPE) and the durable mark: versions are contiguous only over
    the whole stream; filtering by pattern happens here. A gap's events are appended, in version
    order, ahead of the event that revealed it. A gap is filled a page at a time (``busy`` until
    it is filled), so one receive never waits for a whole gap, nor holds it in memory.

    While the broker has an event log that acks (``durable`` is not None), a live event waits in
    ``waiting`` until the broker's durable mark (PROTOCOL.md "Read-committed") covers it: an event
    the broker stamped and sent but the log never wrote (both killed) may be stamped again under a
    new version when its publisher sends it again, and would otherwise reach us twice. Waiting
    events the log never confirms (a new broker, or more than ``page`` of them) are let go: what
    the log has of them comes back as a gap fill, by version.
    """

    def __init__(self, patterns: tuple[str, ...], *, timeout: float, page: int = PAGE) -> None:
        super().__init__(patterns, "count")
        self.policy = "recover"
        self.prefixes = [*EVERY_TYPE, DURABLE]
        self.timeout = timeout
        """Longest a gap fill waits for the log to reach the versions it needs."""
        self.page = page
        """Rows fetched from the log per step of a fill, and most live events kept waiting."""
        self.last_version: int | None = None
        self.durable: int | None = 0
        """The broker's durable mark: live events above it wait. None: the broker has no event log
        acking, and live events are delivered as they come (until the first look says, they wait)."""
        self.waiting: deque[tuple[int, bytes, int, bytes]] = deque()
        """Live events above ``durable``, in version order, following on from ``last_version``:
        (version, topic, topic_seq, body)."""
        self._release = False
        self._fill_to: int | None = None
        """While set, the versions up to it are being fetched from the log (``held`` waits)."""
        self._log_behind_since: float | None = None

    feed = EventDecoder.feed_each

    def begin(self, topic: bytes, version: int, topic_seq: int) -> None:
        """A fragment arrived: a subscription that received nothing yet starts there, as it would
        at a whole event, so that an event a full queue cut short is filled from the log."""
        if self.last_version is None:
            self.last_version = version - 1

    def decode(self, topic: bytes, stamp: bytes, body: bytes) -> Event | None:
        """The next event in version order, or None (filtered out, malformed, a duplicate, held,
        waiting for the durable mark)."""
        if len(stamp) != 16:
            self.malformed += 1
            return None
        version, topic_seq = _unpack_stamp(stamp)
        if not version:
            if topic == DURABLE:
                self._mark(body)
            return None
        waiting = self.waiting
        last = waiting[-1][0] if waiting else self.last_version
        if last is None:
            last = self.last_version = version - 1  # the first event: the subscription starts here
        if version <= last:
            return None  # delivered already (from the log at the seam, or by a catch-up)
        if version != last + 1 or len(waiting) >= self.page:
            waiting.clear()  # the log has what it confirms of them: fetched with the gap
            self.held = (topic, stamp, body)
            return None
        durable = self.durable
        if durable is not None and (version > durable or waiting):
            waiting.append((version, topic, topic_seq, body))
            return None
        return self._take(version, topic, topic_seq, body)

    def _take(self, version: int, topic: bytes, topic_seq: int, body: bytes) -> Event | None:
        """Deliver the next version: its Event, or None if it does not match or is malformed."""
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
        return Event(event_type, payload, version, ts, source, session_id, topic_seq, publisher_of(body))

    def _mark(self, body: bytes) -> None:
        """The broker's durable mark: release the waiting events it covers (``resolve`` does)."""
        if body:
            if len(body) != DURABLE_MARK.size:
                self.malformed += 1
                return
            self.durable = DURABLE_MARK.unpack(body)[0]
        else:
            self.durable = None
        self._note_release()

    def _note_release(self) -> None:
        waiting = self.waiting
        if waiting and (self.durable is None or waiting[0][0] <= self.durable):
            self._release = self.busy = True

    def _release_due(self, append: Append) -> None:
        """Deliver the waiting events the durable mark covers, in order."""
        self._release = False
        waiting, durable, take = self.waiting, self.durable, self._take
        while waiting and (durable is None or waiting[0][0] <= durable):
            event = take(*waiting.popleft())
            if event is not None:
                append(event)

    def set_floor(self, floor: int) -> None:
        """Every event up to ``floor`` came from the log."""
        self.last_version = floor
        waiting = self.waiting
        while waiting and waiting[0][0] <= floor:
            waiting.popleft()
        if waiting and waiting[0][0] != floor + 1:
            waiting.clear()  # lost on the way: the next live event shows the gap

    def resolve(self, append: Append) -> Resolve:
        """One step of settling what is pending: the waiting events a durable mark released; then
        filling the gap before the held message (or a catch-up) from the log: one page, or one
        short wait for a log that has not yet written the versions; the held message is decoded
        once the gap is filled. ``busy`` says whether more steps are needed.

        Raises:
            SlowSubscriberError: the log could not supply the gap (it lost them too, is down, or
                did not reach the versions within ``timeout``).
        """
        if self._release:
            self._release_due(append)
        if self.held is None and self._fill_to is None:
            self.busy = self._release
            return
        assert self.last_version is not None
        if self.held is not None:
            version = _unpack_stamp(self.held[1][:16])[0]
            self._fill_to = max(self._fill_to or 0, version - 1)
        try:
            yield from self._fill_step(append)
        except (BusTimeout, BusUnavailable) as e:
            self._fill_to = self._log_behind_since = None
            self.busy = self._release
            if self.held is None:
                return  # a catch-up: a gap seen later is filled then
            topic, stamp, _ = self.held
            self.held = None
            lost = _unpack_stamp(stamp[:16])[0] - 1 - self.last_version
            self.lost += lost
            raise SlowSubscriberError(lost, topic.decode("utf-8", "replace")) from e
        if self._fill_to is None and self.held is not None:
            held, self.held = self.held, None
            self.feed(*held, append)  # a run's events: a new gap may show among them (held again)
            if self.held is not None:
                self._fill_to = _unpack_stamp(self.held[1][:16])[0] - 1
        self.busy = self._fill_to is not None or self._release

    def _fill_step(self, append: Append) -> Resolve:
        """Fetch one page of the logged events ``last_version < version <= _fill_to`` matching."""
        through, after = self._fill_to, self.last_version
        assert through is not None and after is not None
        if after >= through:
            self._fill_to = None
            return
        request = replay_request(self.patterns, since=after, until=through, page=self.page)
        result = yield Ask("log", request)
        rows = result["events"]
        for row in rows:
            append(event_of_row(row))
        self.recovered += len(rows)
        self.received += len(rows)
        self.last_version = max(after, min(result["next"], through))
        if result["done"] or self.last_version >= through:
            self.last_version = through
            self._fill_to = self._log_behind_since = None
            return
        if rows or not result.get("exhausted", True):
            self._log_behind_since = None
            return
        # The log holds nothing more yet: it has not written up to ``through``.
        now = time.monotonic()
        if self._log_behind_since is None:
            self._log_behind_since = now
        elif now - self._log_behind_since >= self.timeout:
            raise BusTimeout(f"the event log reached version {result['last']}, not {through}, within {self.timeout:g}s")
        yield Sleep(LOG_WAIT)

    def idle(self, now: float, left: float, append: Append) -> Resolve | None:
        """While idle, at most every TAIL_LOOK seconds: ask the broker how far it stamped and how
        far its log has written, and fetch from the log what we have not got (a loss at the very
        end of a burst shows no gap until the next event arrives; a durable mark may have been
        lost; a new broker never confirms what the old one left waiting). Live copies of what is
        fetched arrive later and are dropped as duplicates."""
        if self.last_version is None or left <= 0 or now < self._next_tail:
            return None  # nothing received: nothing was queued, so nothing was dropped
        self._next_tail = now + TAIL_LOOK
        return self._catch_up(min(IDLE_LOOK_TIMEOUT, left), append)

    def first_look(self) -> Resolve:
        """Right after the handshake: which broker this is, and whether (and how far) its log acks."""
        try:
            reply = yield Ask("control", PING)
        except BusError:
            return  # the marks, or the next idle look, will tell
        self.epoch = broker_epoch(reply)
        self.durable = _durable_of(reply)
        self._note_release()

    def _catch_up(self, timeout: float, append: Append) -> Resolve:
        try:
            reply = yield Ask("control", PING, timeout=timeout, retries=0)
        except BusError:
            return
        version, stamped = broker_position(reply)
        if self._new_epoch(broker_epoch(reply)):
            self.restarts += 1
            self.waiting.clear()  # the new broker never confirms them: the log has what it kept
        self.durable = durable = _durable_of(reply)
        self._note_release()
        if self._release:
            self._release_due(append)
        last = self.waiting[-1][0] if self.waiting else self.last_version
        target = version if durable is None else min(version, durable)
        if (stamped or durable is not None) and last is not None and target > last:
            self._fill_to = max(self._fill_to or 0, target)
            self.busy = True  # the front fills it a page per step, as it does a gap


def _durable_of(reply: dict[str, object]) -> int | None:
    """The broker's durable mark in a ping reply: None while it has no event log acking."""
    durable = reply.get("durable")
    return durable if isinstance(durable, int) else None
