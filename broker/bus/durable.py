"""The broker's durable path: who published what (dedup), confirmations upstream, and the stamped
events the event log has not yet acknowledged (kept to send it again).

The broker's hot loop calls :meth:`Durable.admit` for each identified publish and hands every
drained batch to :meth:`Durable.deliver`; everything else here runs once per batch or per log ack.
PROTOCOL.md §4.1 and §4.2 describe the messages.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from broker.bus.split import Splitter
from schemas.envelope import (
    CONFIRM,
    CONFIRM_MAX_BYTES,
    CONFIRM_PAIR,
    DURABLE,
    DURABLE_MARK,
    LOG_ID,
    LOG_IDS,
    LOG_RESEND,
    RESEND_STAMP_PAD,
    STAMP,
    WANT_VERSION,
    run_stamp,
)

log = logging.getLogger("pryxbus.broker")

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_send = zmq.backend.Socket.send
_ENTRY_TAIL = struct.Struct("!QH")  # after the raw publisher id: through, pair count
_pack_pair = CONFIRM_PAIR.pack
_MAX_PAIRS = 0xFFFF
_NUMBER = WANT_VERSION - 1
_ZERO_STAMP = STAMP.pack(0, 0)
CONFIRM_DELAY = 0.005
"""Seconds a confirmation without a requested version may wait to be coalesced with the next."""
RUN_OVERHEAD = 256
"""Bytes a kept run costs beyond its bodies (the tuple, its lists, a Frame per body), roughly."""

Run = tuple[bytes, int, int, list[Any], list[int], int]
"""A delivered message: topic, first version, first topic sequence, bodies, the sizes of its
events, bytes. A batch is one body frame holding all its events (one size per event)."""
Identified = tuple[int, bytes, int]
"""An identified event stamped: version, publisher id (8 bytes), number (WANT_VERSION included)."""

MAX_PUBLISHERS = 100_000
"""Publishers whose highest number the broker remembers (the least recently seen are forgotten)."""
LOG_BUDGET = 64 * 1024 * 1024
"""Bytes of stamped events the broker keeps until the event log acks them (``--log-budget``)."""
LOG_BUDGET_EVENTS = 500_000
"""Events kept the same way; below the log's queue (``--log-hwm``), so that queue never overflows."""


class Durable:
    """Dedup, confirmations and the unlogged buffer of one broker.

    While ``logging`` (an event log acks what it has written), an event is confirmed once the log's
    ack covers its version and is kept until then; otherwise it is confirmed once stamped.
    """

    def __init__(
        self,
        xsub: zmq.Socket,
        xpub: zmq.Socket,
        send_run: Callable[[bytes, int, int, list[Any], list[int]], None],
        *,
        budget_bytes: int = LOG_BUDGET,
        budget_events: int = LOG_BUDGET_EVENTS,
        max_publishers: int = MAX_PUBLISHERS,
    ) -> None:
        self.xsub, self.xpub, self._send_run = xsub, xpub, send_run
        self.split = Splitter(0)
        """How a run sent again longer than a message goes (the broker's)."""
        self.budget_bytes = max(1, budget_bytes)
        self.budget_events = max(1, budget_events)
        self.max_publishers = max(1, max_publishers)
        self.pubs: dict[bytes, list[int]] = {}
        """Publisher id -> [highest number stamped, its version, highest number confirmed, version
        when last moved]; in about least-recently-seen order (a dict keeps insertion order; a
        publisher is moved last when seen if it was not moved within the last max_publishers
        versions, so the ones forgotten first are never among the recently active)."""
        self.batch: list[Identified] = []
        self.touched: dict[bytes, list[int]] = {}
        """Publishers whose next numbers :meth:`admit` stamped in this batch without keeping them."""
        self.news: dict[bytes, list[Any]] = {}
        """What to confirm, not sent yet: publisher id -> [through, [(number, version)]]."""
        self._urgent = False
        self._sent_at = 0.0
        self._dups: list[tuple[bytes, int, int]] = []
        self.logging = False
        self.awaiting_hello = False
        """The log (re)subscribed: its first ack says from where to send it again what it lacks."""
        self.durable = 0
        """Highest version the event log has acked."""
        self.unlogged: deque[tuple[int, int, int, bytes | None, list[Run]]] = deque()
        """(last version, bytes, events, LOG_IDS body or None, runs) per delivered batch."""
        self.unlogged_bytes = 0
        self.unlogged_events = 0
        self.unconfirmed: deque[Identified] = deque()
        self.identified = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.confirmations = 0
        self.confirm_dropped = 0
        self.resent = 0

    # -- the hot loop ------------------------------------------------------------------------

    def admit(self, pid: bytes, number: int, version: int) -> bool:
        """Should this identified event (publisher id as its 8 raw bytes: a dict key with no
        decoding; number with WANT_VERSION) be stamped (with ``version``)? False for a (publisher,
        number) already stamped (it is confirmed again instead, never stamped twice) and for a
        number past the next one expected of a known publisher (refused: it must send again from
        its confirmed number on, in order).

        The usual case without an event log, a known publisher's next number not asking for its
        version, costs one lookup and one dict store: the batch confirms each publisher it touched
        up to its highest number (:meth:`deliver`), with nothing kept per event."""
        entry = self.pubs.get(pid)
        if entry is None or number != entry[0] + 1:  # new, a repeat, a hole, or WANT_VERSION
            return self._unusual(pid, number, version, entry)
        entry[0] = number
        entry[1] = version
        self.touched[pid] = entry
        self.identified += 1
        return True

    def admit_logged(self, pid: bytes, number: int, version: int) -> bool:
        """:meth:`admit` while an event log acks: each event is kept (version, publisher, number),
        for the log's LOG_IDS and to be confirmed once the log has it."""
        entry = self.pubs.get(pid)
        if entry is None or number != entry[0] + 1:
            return self._unusual(pid, number, version, entry)
        entry[0] = number
        entry[1] = version
        self.seen(pid, entry)
        self.batch.append((version, pid, number))
        return True

    def seen(self, pid: bytes, entry: list[int]) -> None:
        """A publisher stamped through ``entry[1]``: if not moved within the last max_publishers
        versions, it is now the most recent (the least recent are forgotten first)."""
        if entry[1] - entry[3] > self.max_publishers and self.pubs.get(pid) is entry:
            entry[3] = entry[1]
            del self.pubs[pid]
            self.pubs[pid] = entry

    def _unusual(self, pid: bytes, number: int, version: int, entry: list[int] | None) -> bool:
        """``admit`` for a new publisher, a repeat, a hole, or an event asking for its version."""
        flagged, plain = number >> 63, number & _NUMBER
        if entry is None or plain == entry[0] + 1:  # new, or the next number asking for its version
            self._stamped(pid, entry, plain, version)
        elif plain <= entry[0]:
            self.duplicates += 1
            self._dups.append((pid, plain, flagged))
            return False
        else:
            # A hole: what came between was lost (a connection keeps its queue across a broker's
            # restart, so events sent after the lost ones arrive first). Stamped now, the lost ones
            # would pass for repeats when sent again; refused, they are all sent again in order.
            self.out_of_order += 1
            return False
        self.batch.append((version, pid, number))
        return True

    def admit_run(self, pid: bytes, first: int, last: int, version: int) -> bool:
        """:meth:`admit` for a batch of identified events numbered ``first`` to ``last`` (checked
        consecutive by the broker), the last to be stamped ``version``: all of them or none. A
        batch is sent again only whole (or its events one by one), so the first number tells:
        the next one expected (stamped), a repeat of a stamped batch (confirmed again), or a hole
        (refused). The event log is told the last event's identity only: what it needs to seed
        the next broker with this publisher's number."""
        entry = self.pubs.get(pid)
        if entry is not None and first != entry[0] + 1:
            if last <= entry[0]:
                self.duplicates += last - first + 1
                self._dups.append((pid, last, 0))
            else:
                self.out_of_order += 1
            return False
        entry = self._stamped(pid, entry, last, version)
        if self.logging:
            self.batch.append((version, pid, last))
            self.identified += last - first  # and one for the entry, when delivered
        else:
            self.touched[pid] = entry
            self.identified += last - first + 1
        return True

    def _stamped(self, pid: bytes, entry: list[int] | None, number: int, version: int) -> list[int]:
        """Note that ``pid``'s ``number`` is stamped ``version`` (its entry, made if new, the oldest
        forgotten past max_publishers; moved last if not moved lately). Returns the entry."""
        pubs = self.pubs
        if entry is None:
            if len(pubs) >= self.max_publishers:
                del pubs[next(iter(pubs))]
            pubs[pid] = entry = [number, version, 0, version]
            return entry
        entry[0] = number
        entry[1] = version
        if version - entry[3] > self.max_publishers:
            entry[3] = version
            del pubs[pid]
            pubs[pid] = entry
        return entry

    def skip(self, pid: bytes, number: int, version: int, last: int | None = None) -> None:
        """An identified event (or batch, numbered ``number`` to ``last``) refused before
        stamping (a topic not valid, or of a new type past ``max_topics``): its numbers are used
        up, so the publisher's next one is not taken for a hole and refused too. It is never
        confirmed by itself; a later event's confirmation covers it (cumulative), as for any
        number below the one confirmed."""
        plain = number & _NUMBER
        through = plain if last is None else last
        entry = self.pubs.get(pid)
        if entry is None:
            if len(self.pubs) >= self.max_publishers:
                del self.pubs[next(iter(self.pubs))]
            self.pubs[pid] = [through, 0, 0, version]
        elif plain == entry[0] + 1:
            entry[0] = through

    def room(self) -> tuple[int, int]:
        """(events, bytes) the next batch may take before the unlogged buffer is full."""
        if not self.logging:
            return 1 << 62, 1 << 62
        return self.budget_events - self.unlogged_events, self.budget_bytes - self.unlogged_bytes

    @property
    def has_news(self) -> bool:
        """Repeated publishes are waiting to be confirmed again."""
        return bool(self._dups)

    @property
    def full(self) -> bool:
        """The unlogged buffer is full: the broker reads no publisher until the log acks."""
        return self.logging and (
            self.unlogged_events >= self.budget_events or self.unlogged_bytes >= self.budget_bytes
        )

    def deliver(self, runs: list[Run]) -> None:
        """Send a drained batch to subscribers; keep it for the log, or confirm it, as due."""
        batch, send_run = self.batch, self._send_run
        self.identified += len(batch)
        if self.logging:
            ids = self._ids(batch) if batch else None
            if ids is not None:
                self._send_ids(ids)
            events = size = 0
            for topic, version, seq, bodies, sizes, nbytes in runs:
                send_run(topic, version, seq, bodies, sizes)
                events += len(sizes)
                size += nbytes + RUN_OVERHEAD
            if runs:
                last = runs[-1][1] + len(runs[-1][4]) - 1
                self.unlogged.append((last, size, events, ids, runs))
                self.unlogged_bytes += size
                self.unlogged_events += events
            if batch:
                self.unconfirmed.extend(batch)
        else:
            for topic, version, seq, bodies, sizes, _nbytes in runs:
                send_run(topic, version, seq, bodies, sizes)
            if self.touched:
                self._confirm_touched()
            if batch:
                self._confirm(batch)
            else:
                self.send_confirmations()
        if batch:
            self.batch = []
        if self._dups:
            self._confirm_again()

    # -- the event log -----------------------------------------------------------------------

    def ack(self, version: int) -> None:
        """The log has everything through ``version`` on disk: drop it, confirm it, and tell the
        subscribers (each ack, repeats included: a mark a full queue dropped is made up for)."""
        if version <= self.durable:
            self.send_mark()
            return
        self.durable = version
        unlogged = self.unlogged
        while unlogged and unlogged[0][0] <= version:
            _last, size, events, _ids, _runs = unlogged.popleft()
            self.unlogged_bytes -= size
            self.unlogged_events -= events
        unconfirmed = self.unconfirmed
        if unconfirmed and unconfirmed[0][0] <= version:
            done = []
            while unconfirmed and unconfirmed[0][0] <= version:
                done.append(unconfirmed.popleft())
            self._confirm(done)
        self.send_mark()

    def send_mark(self) -> None:
        """The durable mark (PROTOCOL.md "Read-committed"): through which version the log has every
        event, or nothing while no log acks. After the events it covers on every connection, so a
        subscriber holding live events back releases those at or below it."""
        xpub = self.xpub
        try:
            _send(xpub, DURABLE, _SNDMORE | _NOBLOCK)
            _send(xpub, _ZERO_STAMP, _SNDMORE)
            _send(xpub, DURABLE_MARK.pack(self.durable) if self.logging else b"", 0)
        except zmq.Again:  # an XPUB drops at a full queue rather than block: never raised
            pass

    def resend(self, above: int) -> None:
        """Send the log again every kept event above ``above`` (its hello), on LOG_RESEND topics
        that only the log subscribes to and with stamps that read as version 0 to anyone else."""
        xpub, sent = self.xpub, 0
        for last, _size, _events, ids, runs in self.unlogged:
            if last <= above:
                continue
            if ids is not None:
                self._send_ids(ids)
            for topic, version, seq, bodies, sizes, _nbytes in runs:
                if version + len(sizes) - 1 <= above:
                    continue
                sent += len(sizes)
                if self.split.needs(sizes):
                    self.split.send(xpub, LOG_RESEND + topic, RESEND_STAMP_PAD, version, seq, bodies, sizes)
                    continue
                _send(xpub, LOG_RESEND + topic, _SNDMORE)
                if len(sizes) == 1:
                    _send(xpub, RESEND_STAMP_PAD + STAMP.pack(version, seq), _SNDMORE)
                    _send(xpub, bodies[0], 0, False)
                elif len(bodies) == 1:  # a batch
                    _send(xpub, RESEND_STAMP_PAD + run_stamp(version, seq, sizes), _SNDMORE)
                    _send(xpub, bodies[0], 0, False)
                else:
                    _send(xpub, RESEND_STAMP_PAD + run_stamp(version, seq, sizes), _SNDMORE)
                    _send(xpub, b"".join(bodies), 0)
        self.resent += sent
        if sent:
            log.info("sent the event log again %d event(s) above version %d", sent, above)

    def without_log(self) -> None:
        """No log acks any more: everything stamped is confirmed now, nothing is kept."""
        self.logging = self.awaiting_hello = False
        self.unlogged.clear()
        self.unlogged_bytes = self.unlogged_events = 0
        if self.unconfirmed:
            done = list(self.unconfirmed)
            self.unconfirmed.clear()
            self._confirm(done)
        self.send_mark()

    def seed(self, publishers: list[list[int]]) -> int:
        """Remember what the log has of each publisher: ``[[id, number, version], ...]``, oldest
        first. Returns how many were taken."""
        pubs, taken = self.pubs, 0
        for row in publishers:
            try:
                pid, number, version = (int(x) for x in row)
                key = pid.to_bytes(8, "big")
            except (TypeError, ValueError, OverflowError):
                continue
            entry = pubs.pop(key, None)
            if entry is None or entry[0] < number:
                entry = [number, version, number, version]
            pubs[key] = entry
            taken += 1
            if len(pubs) > self.max_publishers:
                del pubs[next(iter(pubs))]
        return taken

    def stats(self) -> dict[str, Any]:
        return {
            "identified": self.identified,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "confirmations": self.confirmations,
            "confirmations_dropped": self.confirm_dropped,
            "publishers_known": len(self.pubs),
            "logging": self.logging,
            "log_durable": self.durable,
            "unlogged_events": self.unlogged_events,
            "unlogged_bytes": self.unlogged_bytes,
            "unconfirmed": len(self.unconfirmed),
            "resent_to_log": self.resent,
        }

    # -- internals ---------------------------------------------------------------------------

    def _ids(self, batch: list[Identified]) -> bytes:
        pack = LOG_ID.pack
        return b"".join([pack(v, int.from_bytes(pid, "big"), n & _NUMBER) for v, pid, n in batch])

    def _send_ids(self, ids: bytes) -> None:
        xpub = self.xpub
        _send(xpub, LOG_IDS, _SNDMORE)
        _send(xpub, _ZERO_STAMP, _SNDMORE)
        _send(xpub, ids, 0)

    def _confirm_touched(self) -> None:
        """Confirm each publisher :meth:`admit` stamped in this batch through its highest number
        (everything stamped is confirmed without a log); move the ones not moved lately last."""
        news, pubs, limit = self.news, self.pubs, self.max_publishers
        for pid, entry in self.touched.items():
            through = entry[0]
            known = news.get(pid)
            if known is None:
                news[pid] = [through, []]
            elif known[0] < through:
                known[0] = through
            entry[2] = through
            if entry[1] - entry[3] > limit:
                entry[3] = entry[1]
                del pubs[pid]
                pubs[pid] = entry
        self.touched = {}

    def _confirm(self, done: list[Identified] | deque[Identified]) -> None:
        """Confirm these events, coalesced per publisher: its highest number and the version of
        each flagged event (sent at once if one is flagged, else within CONFIRM_DELAY)."""
        news = self.news
        get = news.get
        for version, pid, number in done:  # a publisher's numbers rise with the version (admit)
            entry = get(pid)
            if entry is None:
                news[pid] = entry = [0, []]
            if number >> 63:
                number &= _NUMBER
                entry[1].append((number, version))
                self._urgent = True
            if number > entry[0]:
                entry[0] = number
        pubs = self.pubs
        for pid, entry in news.items():
            known = pubs.get(pid)
            if known is not None and known[2] < entry[0]:
                known[2] = entry[0]
        self.send_confirmations()

    def send_confirmations(self) -> None:
        """Send what is to confirm, unless the last confirmation went less than CONFIRM_DELAY ago
        and no publisher waits for a version: under a steady load of small batches, publishers
        then get a few hundred confirmations a second, not one per batch."""
        now = time.monotonic()
        if not self.news or (not self._urgent and now - self._sent_at < CONFIRM_DELAY):
            return
        news, self.news, self._urgent, self._sent_at = self.news, {}, False, now
        self._send_confirm(news)

    def _confirm_again(self) -> None:
        """Answer repeated (publisher, number)s with what is confirmed of that publisher: a number
        not yet confirmed gets its confirmation when the log acks it, as the first copy would."""
        news = self.news
        pubs = self.pubs
        for pid, number, flagged in self._dups:
            known = pubs.get(pid)
            if known is None or known[2] < number:
                continue
            entry = news.get(pid)
            if entry is None:
                news[pid] = entry = [known[2], []]
            elif entry[0] < known[2]:
                entry[0] = known[2]
            if flagged and number == known[0]:
                entry[1].append((number, known[1]))
                self._urgent = True
        self._dups = []
        self.send_confirmations()

    def _send_confirm(self, news: dict[bytes, list[Any]]) -> None:
        parts: list[bytes] = []
        size = 1
        for pid, (through, pairs) in news.items():
            for start in range(0, max(len(pairs), 1), _MAX_PAIRS):
                chunk = pairs[start : start + _MAX_PAIRS]
                part = pid + _ENTRY_TAIL.pack(through, len(chunk))
                if chunk:
                    part += b"".join([_pack_pair(n, v) for n, v in chunk])
                if parts and size + len(part) > CONFIRM_MAX_BYTES:
                    self._send_upstream(parts)
                    parts, size = [], 1
                parts.append(part)
                size += len(part)
        if parts:
            self._send_upstream(parts)

    def _send_upstream(self, parts: list[bytes]) -> None:
        """To every connected publisher (libzmq's XSUB sends a user message to all); a publisher
        whose queue is full misses it, and a later confirmation (cumulative) makes up for it."""
        try:
            self.xsub.send(CONFIRM + b"".join(parts), _NOBLOCK)
            self.confirmations += 1
        except zmq.Again:
            self.confirm_dropped += 1
