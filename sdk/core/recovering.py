"""The decoder of a ``policy="recover"`` subscription: every event in version order, gaps filled
from the event log a page at a time (see :class:`RecoveringDecoder`)."""

from __future__ import annotations

import time

from schemas.envelope import STAMP, MalformedEvent, decode_body
from sdk.core.decoding import IDLE_LOOK_TIMEOUT, TAIL_LOOK, Append, EventDecoder, Resolve, event_of_row
from sdk.core.flows import LOG_WAIT, PAGE, PING, Ask, Sleep, broker_position, replay_request
from sdk.errors import BusError, BusTimeout, BusUnavailable, SlowSubscriberError
from sdk.event import Event

_unpack_stamp = STAMP.unpack


class RecoveringDecoder(EventDecoder):
    """Decoder of a ``policy="recover"`` subscription: fills version gaps from the event log.

    It subscribes to every event (``prefixes = [b""]``) because versions are contiguous only over
    the whole stream; filtering by pattern happens here. A gap's events are appended, in version
    order, ahead of the event that revealed it. A gap is filled a page at a time (``busy`` until
    it is filled), so one receive never waits for a whole gap, nor holds it in memory.
    """

    def __init__(self, patterns: tuple[str, ...], *, timeout: float, page: int = PAGE) -> None:
        super().__init__(patterns, "count")
        self.policy = "recover"
        self.prefixes = [b""]
        self.timeout = timeout
        """Longest a gap fill waits for the log to reach the versions it needs."""
        self.page = page
        """Rows fetched from the log per step of a fill."""
        self.last_version: int | None = None
        self._fill_to: int | None = None
        """While set, the versions up to it are being fetched from the log (``held`` waits)."""
        self._log_behind_since: float | None = None

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
        """One step of filling the gap before the held message (or a catch-up) from the log: one
        page, or one short wait for a log that has not yet written the versions; the held message
        is decoded once the gap is filled. ``busy`` says whether more steps are needed.

        Raises:
            SlowSubscriberError: the log could not supply the gap (it lost them too, is down, or
                did not reach the versions within ``timeout``).
        """
        assert self.last_version is not None
        if self.held is not None:
            version = _unpack_stamp(self.held[1][:16])[0]
            self._fill_to = max(self._fill_to or 0, version - 1)
        try:
            yield from self._fill_step(append)
        except (BusTimeout, BusUnavailable) as e:
            self._fill_to = self._log_behind_since = None
            self.busy = False
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
        self.busy = self._fill_to is not None

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
        """While idle, at most every TAIL_LOOK seconds: fetch what the broker stamped after our
        last event (a loss at the very end of a burst shows no gap until the next event arrives).
        Live copies of what is fetched arrive later and are dropped as duplicates."""
        if self.last_version is None or left <= 0 or now < self._next_tail:
            return None  # nothing received: nothing was queued, so nothing was dropped
        self._next_tail = now + TAIL_LOOK
        return self._catch_up(min(IDLE_LOOK_TIMEOUT, left))

    def first_look(self) -> Resolve:
        """A recovering subscription follows versions, not runs: nothing to learn."""
        return
        yield  # a generator with no step

    def _catch_up(self, timeout: float) -> Resolve:
        try:
            version, stamped = broker_position((yield Ask("control", PING, timeout=timeout, retries=0)))
        except BusError:
            return
        if stamped and self.last_version is not None and version > self.last_version:
            self._fill_to = max(self._fill_to or 0, version)
            self.busy = True  # the front fills it a page per step, as it does a gap
