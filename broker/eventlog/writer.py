"""The event log's ingest side: a subscriber to every event that appends them to the store in batches.

It connects to the broker's XPUB like any subscriber (an XSUB with a large receive queue, so the
broker's per-subscriber high-water mark is backed by ours), decodes the stamp and just the envelope
header it indexes (ts, source, session_id), and keeps the body bytes as they came. One transaction
per drained batch; after each, an ack upstream tells the broker what is on disk (PROTOCOL.md §4.2:
the broker confirms publishers at these acks, and sends the log again what it lacks after a
reconnect, on LOG_RESEND topics). The publisher of an identified event (LOG_IDS) is kept with it. Versions are contiguous within one broker run, so any jump is a gap: recorded
in the ``gaps`` table as ``lost`` (the log fell behind) or ``reconnect`` (the first jump after the log (re)connected: a
broker restart skips versions it had reserved, and events published while the log was not
connected are not in it).
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from broker.eventlog.store import EventStore, Row, RunRow
from broker.eventlog.store import signed_id
from broker.sockets import parse_monitor_message
from schemas.envelope import (
    CONTROL_PREFIX,
    CONFIRM,
    DURABLE,
    FLOAT64,
    LOG_ACK,
    LOG_ID,
    LOG_IDS,
    LOG_MARK,
    LOG_RESEND,
    RESEND_STAMP_PAD,
    STAMP,
    SYNC_PREFIX,
    MalformedEvent,
    decode_header,
    header_fields,
    split_run,
)
from schemas.fragments import Fragments, is_fragment
from sdk.security import ClientKeys, secure_client
from sdk.transport import event_socket

log = logging.getLogger("pryxbus.eventlog")

_NOBLOCK = int(zmq.NOBLOCK)
_unpack_stamp = STAMP.unpack
_unpack_ts = FLOAT64.unpack_from
_INF = float("inf")

DEFAULT_RCVHWM = 1_000_000
MAX_BATCH = 50_000
ACK_INTERVAL = 1.0
"""Seconds between acks while nothing new is written (a broker awaiting our hello gets it)."""
HOLE_WINDOW = 2_000_000
"""Versions below its last that a starting log asks the broker to send again from, if a gap it
recorded reaches into them: a log killed while the broker was sending it a gap again still lacks
it, and the broker keeps it until an ack covers it (at most 500,000 events, plus a restart's jump)."""
HOLE_WAIT = 5.0
"""Seconds after our hello that acks stay below a gap seen since we (re)connected, if the broker's
durable mark (the end of what it sends again) does not come first."""
WRITE_RETRY = 1.0
"""Seconds between tries of a batch the disk refused (full, I/O error); nothing is read meanwhile."""


class LogWriter:
    """Subscribes to everything at the broker and appends each drained batch to the store."""

    def __init__(
        self,
        ctx: zmq.Context,
        store: EventStore,
        subscribe: str,
        *,
        rcvhwm: int = DEFAULT_RCVHWM,
        curve: ClientKeys | None = None,
    ) -> None:
        self.store = store
        self.last_version = store.last_version()
        self.written = 0
        self.batches = 0
        self.malformed = 0
        self.lost = 0
        self.gap_count = 0
        self.reconnects = 0
        self._reconnected = True  # the first event after start may follow a restart's jump
        self.write_errors = 0
        self.resent = 0
        self._fragments = Fragments()
        self.acks = 0
        self._acked = -1
        self._acked_at = 0.0
        self.hello_due = True
        """Send an ack as soon as what has arrived is written: the broker awaits it after we
        (re)connect (our hello), to send us again what we lack."""
        self._hole: int | None = store.first_missing(self.last_version - HOLE_WINDOW)
        """The first version of the first gap seen since we (re)connected, or recorded before we
        started: events can reach us live before the broker knows we are back, and we may have been
        killed while it sent a gap again, so the gap may be what it keeps for us. Acks (the hello
        first) stay below it until the broker has answered the hello (its durable mark)."""
        self._hello_at: float | None = None
        """When the first ack since the (re)connect went (None: not yet, or answered)."""
        self._mine: set[int] = set()
        """Ids of the gap records this process made (its counters count them), and of the records
        that replaced them when events sent again filled part of them."""
        self._origin: dict[int, int] = {}  # a replacing record's id -> the id of the gap it came from
        self._pieces: dict[int, int] = {}  # a gap's id -> its records still missing something, if split
        self._ids: dict[int, tuple[int, int]] = {}  # version -> (publisher id, number), from LOG_IDS
        self._signed: dict[int, int] = {}  # publisher id -> as SQLite stores it
        self._unwritten: tuple[list[Row], list[RunRow]] = ([], [])
        self._unwritten_last = self.last_version
        self._unwritten_refill: list[int] = []  # the versions sent again in it (gaps to update once written)
        self.retry_at: float | None = None
        """While set (time.monotonic()), a batch waits for the disk: nothing more is read until it
        is written, so the events wait in ZeroMQ's queues (and are counted lost if those overflow)."""
        # XSUB, not SUB: it can send the broker user messages (our acks) besides subscriptions.
        self.sock = event_socket(ctx.socket(zmq.XSUB))
        self.sock.linger = 0
        self.sock.rcvhwm = rcvhwm
        if curve is not None:  # a --curve broker lets in the home's client keypair
            secure_client(self.sock, curve)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(subscribe)
        self.sock.send(b"\x01")  # everything (an XSUB replays its subscriptions on a reconnect)
        self.sock.send(b"\x01" + LOG_MARK)  # after everything: a broker with await_log waits for it

    def await_live(self, timeout: float, stopped: Callable[[], bool] = lambda: False) -> bool:
        """Return True once the broker has our subscription (it answers a sync topic sent after it),
        False as soon as ``stopped()`` (checked at least every 100 ms: a SIGTERM while the broker is
        away must not wait out the whole timeout).

        Raises:
            TimeoutError: the broker did not answer in time.
        """
        token = SYNC_PREFIX + uuid.uuid4().hex.encode()
        self.sock.send(b"\x01" + token)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if stopped():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the broker did not confirm the log's subscription in {timeout:g}s")
                if not self.sock.poll(min(int(remaining * 1000) + 1, 100), zmq.POLLIN):
                    continue
                if self.drain(stop_at=token):
                    return True
        finally:
            self.sock.send(b"\x00" + token)

    def handle_monitor(self) -> None:
        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(_NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._reconnected = True
                self.hello_due = True
                self._hello_at = None

    def send_ack(self) -> None:
        """Tell the broker every version through ``last_version`` is on disk (also our hello)."""
        self.hello_due = False
        if self.retry_at is not None:  # a refused batch: what we have is not on disk yet
            return
        self._acked_at = now = time.monotonic()
        if self._hello_at is None:
            self._hello_at = now
        self._acked = through = self._through()
        try:
            self.sock.send(LOG_ACK.pack(CONFIRM, through), _NOBLOCK)
            self.acks += 1
        except zmq.Again:  # the broker reads acks at once; a later one says the same and more
            pass

    def _through(self) -> int:
        """What an ack says: every version up to it is on disk (or lost for good, and recorded)."""
        hole = self._hole
        return self.last_version if hole is None else min(self.last_version, hole - 1)

    def _answered(self) -> None:
        """The broker answered our hello (or did not within HOLE_WAIT): what it kept for us has
        come, so a gap still open is lost for good, and acks go on from what we have."""
        self._hole = None

    def ack_if_due(self) -> None:
        """After a commit, a (re)connect, or ACK_INTERVAL without one: a lost hello is repeated."""
        now = time.monotonic()
        if self._hole is not None and self._hello_at is not None and now - self._hello_at >= HOLE_WAIT:
            self._answered()
        if self.hello_due or self._through() > self._acked or now - self._acked_at >= ACK_INTERVAL:
            self.send_ack()

    def drain(self, stop_at: bytes | None = None) -> bool:
        """Receive what is queued (up to a batch), append it in one transaction.

        Returns True if ``stop_at`` (a sync topic) was seen.
        """
        if self.retry_at is not None:
            if time.monotonic() < self.retry_at or not self._write(
                self._unwritten, self._unwritten_last, self._unwritten_refill
            ):
                return False
        recv = self.sock.recv
        ids = self._ids
        rows: list[Row] = []
        runs: list[RunRow] = []
        late: list[Row] = []
        append = rows.append
        last = self.last_version
        seen_stop = False
        refill: list[int] = []  # the lowest and highest version sent again
        for _ in range(MAX_BATCH):
            try:
                topic = recv(_NOBLOCK)
            except zmq.Again:
                break
            # The broker sends every delivery (and sync reply) as exactly 3 frames: no RCVMORE
            # look per frame (each costs ~0.6 us, DESIGN.md §4.2).
            stamp = recv()
            body = recv()
            if topic[:1] == CONTROL_PREFIX:
                if topic.startswith(LOG_RESEND):  # an event sent again: its stamp after the pad
                    topic, stamp = topic[len(LOG_RESEND) :], stamp[len(RESEND_STAMP_PAD) :]
                    if is_fragment(topic, stamp):
                        whole = self._fragments.take(topic, stamp, body)
                        if whole is None:
                            continue
                        topic, stamp, body = whole
                    self.resent += 1
                    if len(stamp) < STAMP.size:  # no stamp after the pad: nothing to place it at
                        self.malformed += 1
                        continue
                    first = _unpack_stamp(stamp[: STAMP.size])[0]
                    end = first + max(1, (len(stamp) - STAMP.size) // 4) - 1  # a run's last version
                    refill = [min(refill[0], first), max(refill[1], end)] if refill else [first, end]
                elif topic == LOG_IDS:
                    self._take_ids(body)
                    continue
                elif topic == DURABLE:
                    if self._hello_at is not None:  # what the broker sends again for our hello came first
                        self._answered()
                    continue
                else:
                    if topic == stop_at:
                        seen_stop = True
                    continue
            if len(stamp) == STAMP.size:
                version, topic_seq = _unpack_stamp(stamp)
                pieces: Iterable[tuple[int, int, bytes]] = ((version, topic_seq, body),)
            elif is_fragment(topic, stamp):  # a part of a long event (schemas/fragments.py)
                whole = self._fragments.take(topic, stamp, body)
                if whole is None:
                    continue
                topic, stamp, body = whole
                version, topic_seq = _unpack_stamp(stamp)
                pieces = ((version, topic_seq, body),)
            else:  # a run: several events of one topic in one message (PROTOCOL.md)
                run = self._run_row(topic, stamp, body, last)
                if run is not None:
                    if run[0] != last + 1:
                        self._gap(last, run[0])
                    last = run[0] + run[9] - 1
                    runs.append(run)
                    continue
                try:
                    pieces = split_run(stamp, body)
                except MalformedEvent:
                    self.malformed += 1
                    continue
            try:
                event_type: str | None = topic.decode("utf-8")
            except UnicodeDecodeError:
                event_type = None
            for version, topic_seq, one in pieces:
                # The version is accounted for before the body is looked at: an event the log
                # cannot keep is counted as malformed, never as a gap or a loss.
                fresh = version > last
                if fresh:
                    if version != last + 1:
                        self._gap(last, version)
                    last = version
                try:
                    if event_type is None:
                        raise ValueError("the type is not UTF-8")
                    ts, source, session_id = decode_header(one)
                except ValueError:
                    self.malformed += 1
                    continue
                pub = ids.pop(version, None) if ids else None
                if pub is None:
                    row = (version, event_type, topic_seq, ts, source, session_id, one, None, None)
                else:
                    row = (version, event_type, topic_seq, ts, source, session_id, one, *pub)
                if fresh:
                    append(row)
                else:  # sent again, or a gap filled: the log may hold it, in a run's row
                    late.append(row)
        if late:
            rows.extend(self._not_held(late, rows, runs))
        if ids:  # ids of events that never came (the broker refuses nothing it named): forget them
            for version in [v for v in ids if v <= last]:
                del ids[version]
        if rows or runs:
            self._write((rows, runs), last, refill)
        else:
            self.last_version = last
            if refill:  # all of it held already (a re-send again, or written before a restart)
                self._refilled(*refill)
        return seen_stop

    def _not_held(self, late: list[Row], rows: list[Row], runs: list[RunRow]) -> list[Row]:
        """Those of ``late`` the log holds neither on disk nor among the rows about to be written
        (each once: ``written`` counts events written, not sent again)."""
        low, high = min(r[0] for r in late), max(r[0] for r in late)
        held = set(self.store.present(low, high))
        held.update(r[0] for r in rows if low <= r[0] <= high)
        for run in runs:
            if run[0] <= high and run[0] + run[9] > low:
                held.update(range(run[0], run[0] + run[9]))
        fresh = []
        for row in late:
            if row[0] not in held:
                held.add(row[0])
                fresh.append(row)
        return fresh

    def _run_row(self, topic: bytes, stamp: bytes, body: bytes, last: int) -> RunRow | None:
        """A run as one row (store.py), if it can be: all its versions new (above ``last``: a run
        sent again may overlap rows of another shape, so its events go one by one), a UTF-8 type,
        every body in the SDK's shape with the same source and session id, and its events either
        anonymous, or its last one only identified (a batch), or each identified by one publisher
        with consecutive numbers. None otherwise."""
        n, rest = divmod(len(stamp) - STAMP.size, 4)
        if rest or n < 2:
            return None
        first, topic_seq = _unpack_stamp(stamp[: STAMP.size])
        if first <= last:
            return None
        sizes = stamp[STAMP.size :]
        lengths = struct.unpack(f"!{n}I", sizes)
        if sum(lengths) != len(body):
            return None
        fields = header_fields(body[: lengths[0]])
        if fields is None or min(lengths) < fields[3] or fields[0] != fields[0]:  # NaN: no range
            return None
        end = fields[3]
        head, lead, tail = body[:end], body[:3], body[11:end]
        low = high = fields[0]
        pos = 0
        for size in lengths:
            if body[pos : pos + end] != head:  # the same but for the ts?
                if body[pos : pos + 3] != lead or body[pos + 11 : pos + end] != tail:
                    return None
                ts = _unpack_ts(body, pos + 3)[0]
                if ts < low:
                    low = ts
                elif ts > high:
                    high = ts
                elif ts != ts:  # NaN: no range to filter on
                    return None
            pos += size
        if high != low and (high == _INF or low == -_INF):  # readers bucket each ts of a spread row
            return None
        pub: tuple[int, int] | tuple[None, None] = (None, None)
        ids = self._ids
        if ids:  # looked up by the run's versions: the ids of other runs may be many
            final = first + n - 1
            if first in ids:  # each event identified, by one publisher with consecutive numbers
                last = ids.get(final)
                if last is None:
                    return None
                publisher, number = last
                versions = range(first, final + 1)
                if any(ids.get(v) != (publisher, number - final + v) for v in versions):
                    return None
                for v in versions:
                    del ids[v]
                pub = last
            elif any(v in ids for v in range(first + 1, final)):
                return None  # some identified, some not
            elif final in ids:  # a batch: its identity on its last event
                pub = ids.pop(final)
        try:
            event_type = topic.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return (first, event_type, topic_seq, low, fields[1], fields[2], body, *pub, n, sizes,
                high if high != low else None)

    def _refilled(self, low: int, high: int) -> None:
        """Events sent again filled (part of) gaps recorded before: the records keep what is still
        missing, and this process's counters no longer count what was filled."""
        for gap_id, kind, filled, pieces in self.store.fill_gaps(low, high):
            log.info("events sent again filled %d missing version(s) of a %s gap", filled, kind)
            if gap_id not in self._mine:
                continue
            if kind == "lost":
                self.lost = max(0, self.lost - filled)
            # The records for what is still missing are this process's too, and the same gap: it
            # is whole once none of them is left (a fill in its middle makes two).
            self._mine.discard(gap_id)  # that record is gone: SQLite may give its id to another
            origin = self._origin.pop(gap_id, gap_id)
            left = self._pieces.pop(origin, 1) - 1 + len(pieces)
            for piece in pieces:
                self._mine.add(piece)
                self._origin[piece] = origin
            if left:
                self._pieces[origin] = left
            else:
                self.gap_count = max(0, self.gap_count - 1)
                if kind == "reconnect":
                    self.reconnects = max(0, self.reconnects - 1)

    def _take_ids(self, body: bytes) -> None:
        """Note the publisher of each identified event named in a LOG_IDS message (they follow)."""
        if len(body) % LOG_ID.size:
            self.malformed += 1
            return
        ids, signed = self._ids, self._signed
        for version, publisher, number in LOG_ID.iter_unpack(body):  # sent again too: a gap's
            stored = signed.get(publisher)
            if stored is None:
                if len(signed) >= 4096:  # publishers come and go
                    signed.clear()
                stored = signed[publisher] = signed_id(publisher)
            ids[version] = (stored, number)

    def _write(self, batch: tuple[list[Row], list[RunRow]], last: int, refill: list[int] | None = None) -> bool:
        """Append a batch; if the disk refuses it, keep it for a retry in WRITE_RETRY seconds.

        A full disk must not kill the log: a restarted one would lose what it had received, and
        find the disk just as full.
        """
        rows, runs = batch
        events = len(rows) + sum(run[9] for run in runs)
        try:
            self.store.append(rows, runs)
        except sqlite3.OperationalError as e:
            if self.retry_at is None:
                log.error("the disk refuses the event log's writes (%s); holding %d event(s) and"
                          " reading no more until it takes them", e, events)
            self.write_errors += 1
            self._unwritten, self._unwritten_last, self._unwritten_refill = batch, last, refill or []
            self.retry_at = time.monotonic() + WRITE_RETRY
            return False
        if self.retry_at is not None:
            log.warning("the event log writes again after %d refused attempt(s)", self.write_errors)
        self._unwritten, self._unwritten_refill, self.retry_at = ([], []), [], None
        self.last_version = last  # only now: `last` tells readers what replay can return
        self.written += events
        self.batches += 1
        self._reconnected = False  # from now on a jump is a loss, unless we reconnect first
        if refill:  # the gaps the events sent again in it filled (also after a refused first try)
            self._refilled(*refill)
        return True

    def _gap(self, last: int, version: int) -> None:
        if version <= last:  # a duplicate or an old version: INSERT OR IGNORE keeps the first
            return
        self.handle_monitor()
        if self._reconnected:
            kind = "reconnect"
            self.reconnects += 1
        else:
            kind = "lost"
            self.lost += version - last - 1
            log.warning("event log lost versions %d..%d", last + 1, version - 1)
        self._reconnected = False
        self.gap_count += 1
        if self._hello_at is None or self._hole is not None:  # since the (re)connect, unanswered
            self._hole = last + 1 if self._hole is None else min(self._hole, last + 1)
        try:
            self._mine.add(self.store.record_gap(kind, last + 1, version - 1))
        except sqlite3.OperationalError as e:  # a full disk: the count above still says it
            log.error("cannot record the %s gap %d..%d: %s", kind, last + 1, version - 1, e)

    def stats(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "batches": self.batches,
            "malformed": self.malformed,
            "lost": self.lost,
            "gaps": self.gap_count,
            "reconnects": self.reconnects,
            "last_version": self.last_version,
            "write_errors": self.write_errors,
            "unwritten": len(self._unwritten[0]) + sum(run[9] for run in self._unwritten[1]),
            "resent": self.resent,
            "acks": self.acks,
        }

    def close(self) -> None:
        for sock in (self.sock, self.monitor):
            if not sock.closed:
                sock.close(linger=0)
