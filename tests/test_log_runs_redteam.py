"""Edge cases of the event log's run rows (broker/eventlog/store.py, writer.py) found by a review:
each test names the promise it checks (an empty replay range, publishers above a version inside a
run, malformed frames from a broker, import's lookups next to a big run). Real SQLite files and,
for the ingest, real ZeroMQ sockets with the broker's frames made by hand (as test_log_runs.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgpack
import zmq

from broker.eventlog.query import LogQueries
from broker.eventlog.store import EventStore
from broker.eventlog.writer import LogWriter
from schemas.envelope import LOG_RESEND, RESEND_STAMP_PAD, encode_body, run_stamp, stamp
from tests.helpers import wait_for
from tests.test_log_runs import _run, _single, log_feed


class _Counters:
    """What LogQueries reads from a writer (its last version), for a store filled by hand."""

    def __init__(self, last: int) -> None:
        self.last_version = last

    def stats(self) -> dict[str, int]:
        return {}


def test_an_empty_range_starting_inside_a_run_is_done(tmp_path: Path) -> None:
    """``since == until`` (or ``until < since``) with ``since`` inside a run's row: no event, and
    the scan is over. It said "not exhausted" with ``next == since`` for a page of 1, so a client
    paging with ``next`` (sdk/core/flows.py log_pages) asked the same page forever."""
    store = EventStore(tmp_path / "events.db")
    try:
        run, _bodies = _run(3, 5)  # versions 3..7
        store.append([_single(1), _single(2), _single(8)], [run])
        for since, until in ((4, 4), (5, 4), (5, 5), (7, 7)):
            rows, next_since, exhausted = store.page(since=since, until=until, limit=1)
            assert (rows, exhausted) == ([], True), (since, until)
            assert next_since >= since
        reply = LogQueries(store, _Counters(8), {}).handle({"op": "replay", "since": 5, "until": 5, "limit": 1})
        assert reply["ok"] and reply["result"]["done"], reply
    finally:
        store.close()


def test_publishers_above_a_version_inside_a_run_name_the_runs_publisher(tmp_path: Path) -> None:
    """``publishers(since)`` lists the publishers of the events above ``since``: a run's row whose
    first version is at or below ``since`` but whose identified last event is above it counts (a
    restarted broker asks with a ``since`` that can fall anywhere, broker/bus/loglink.py)."""
    store = EventStore(tmp_path / "events.db")
    try:
        run, _bodies = _run(4, 6, pub=(-7, 42))  # versions 4..9, the last one publisher -7's number 42
        store.append([_single(1), _single(2), _single(3)], [run])
        assert store.publishers(since=3, limit=10) == [[(1 << 64) - 7, 42, 9]]
        assert store.publishers(since=6, limit=10) == [[(1 << 64) - 7, 42, 9]]
        assert store.publishers(since=9, limit=10) == []
    finally:
        store.close()


def _feed(tmp_path: Path, messages: list[list[bytes]], until: int, check) -> None:
    """Send ``messages`` to a real LogWriter over ZeroMQ, drain until ``last_version == until``,
    then call ``check(writer, store)``."""
    store = EventStore(tmp_path / "events.db")
    try:
        with log_feed(tmp_path, store) as (feed, writer):
            for frames in messages:
                feed.send_multipart(frames)
            wait_for(lambda: (writer.drain(), writer.last_version)[1], lambda last: last == until,
                     what=f"the log to reach version {until}")
            while writer.sock.poll(50):
                writer.drain()
        check(writer, store)
    finally:
        store.close()


def test_a_resent_message_with_a_short_stamp_is_malformed_not_a_crash(tmp_path: Path) -> None:
    """A LOG_RESEND message whose stamp is shorter than the pad and a stamp made the writer's drain
    raise struct.error (the log process dies on input)."""
    good = encode_body({"i": 1}, source="t", session_id=None, ts=1.0)
    messages = [[LOG_RESEND + b"t:x", RESEND_STAMP_PAD + b"\x00\x01", good],
                [LOG_RESEND + b"t:x", b"", good],
                [b"t:x", stamp(1, 1), good]]

    def check(writer: LogWriter, store: EventStore) -> None:
        assert (writer.written, writer.malformed, store.count()) == (1, 2, 1)

    _feed(tmp_path, messages, 1, check)


def test_a_body_whose_ts_is_not_a_number_is_malformed_not_a_crash(tmp_path: Path) -> None:
    """decode_header did ``float(ts)`` on whatever the body held: nil or an array raised TypeError,
    which the writer does not catch (it counts ValueError as malformed)."""
    bad = [msgpack.packb([1, ts, "t", None, {}]) for ts in (None, [1], {"a": 1})]
    good = encode_body({"i": 4}, source="t", session_id=None, ts=1.0)
    messages = [[b"t:x", stamp(v, v), body] for v, body in enumerate(bad, 1)]
    messages.append([b"t:x", run_stamp(4, 4, [len(bad[0]), len(good)]), bad[0] + good])  # in a run too
    messages.append([b"t:x", stamp(6, 6), good])

    def check(writer: LogWriter, store: EventStore) -> None:
        assert (writer.malformed, writer.written, store.count()) == (4, 2, 2)

    _feed(tmp_path, messages, 6, check)


def test_import_lookups_above_a_big_run_do_not_expand_it_per_version(tmp_path: Path) -> None:
    """events_at read the row at or below each version asked and expanded it, even when that row
    (a run of thousands) ends below the version: an import of a deleted session's 5,000 versions
    above a 4,096-event run took 9.45 s (each lookup split 4,096 bodies; 0.03 s since). What it
    finds is checked here; its speed is not a test's to judge."""
    store = EventStore(tmp_path / "events.db")
    try:
        run, _bodies = _run(1, 4096, session="other")
        store.append([_single(v, session="s") for v in range(20000, 20003)], [run])
        asked = [*range(5000, 10000), *range(20000, 20003)]  # what delete_session vacated, and more
        found = store.events_at(asked)
        assert sorted(found) == [20000, 20001, 20002]
        at = store.events_at([1, 4096, 4097, 20001])
        assert sorted(at) == [1, 4096, 20001] and at[4096][2] == "other"
    finally:
        store.close()


def test_a_run_with_an_infinite_ts_is_summarised_in_buckets(tmp_path: Path) -> None:
    """A run whose ts differ made a row with ts_last; summary reads such rows' ts event by event in
    Python, where ``int(inf / bucket)`` raises OverflowError: a summary with buckets over it failed
    ("internal") for every client, where the same events as single rows are counted in SQL."""
    bodies = [encode_body({"i": i}, source="t", session_id="s", ts=ts)
              for i, ts in enumerate((1.0, float("inf"), 2.0, float("-inf")))]
    messages = [[b"t:x", run_stamp(1, 1, [len(b) for b in bodies[:2]]), b"".join(bodies[:2])],
                [b"t:x", run_stamp(3, 3, [len(b) for b in bodies[2:]]), b"".join(bodies[2:])]]

    def check(writer: LogWriter, store: EventStore) -> None:
        assert (writer.written, writer.malformed) == (4, 0)
        queries = LogQueries(store, writer, {})
        for msg in ({"op": "summary", "bucket": 10.0}, {"op": "summary", "bucket": 10.0, "ts_from": 0.0}):
            reply = queries.handle(msg)
            assert reply["ok"], reply
            expected = 4 if "ts_from" not in msg else 3
            assert reply["result"]["events"] == expected
            assert sum(n for _start, _type, n in reply["result"]["buckets"]) == expected
        rows, _, _ = store.page(since=0, until=None, limit=10, ts_from=1.5)
        assert [r[0] for r in rows] == [2, 3]

    _feed(tmp_path, messages, 4, check)


def _send_versions(feed: zmq.Socket, bodies: dict[int, bytes], first: int, n: int, *, resent: bool = False) -> None:
    """Versions ``first`` .. ``first + n - 1`` of ``bodies`` as the broker delivers them: one event
    or a run, live or sent again (PROTOCOL.md "Event log")."""
    chosen = [bodies[v] for v in range(first, first + n)]
    st = stamp(first, first) if n == 1 else run_stamp(first, first, [len(b) for b in chosen])
    topic = (LOG_RESEND if resent else b"") + b"t:run"
    feed.send_multipart([topic, (RESEND_STAMP_PAD if resent else b"") + st, b"".join(chosen)])


def test_a_gap_sent_again_over_two_drains_is_no_longer_counted(tmp_path: Path) -> None:
    """A lost gap the broker sends again in pieces that land in different drains: the first piece
    replaces the gap's record by one for what is still missing (a new id), and the writer's
    counters only follow records it made itself (``_mine``), so the second piece left ``lost`` and
    ``gaps`` counting versions the log now holds."""
    store = EventStore(tmp_path / "events.db")
    bodies = {v: encode_body({"v": v}, source="t", session_id="s", ts=float(v)) for v in range(1, 11)}

    def send(feed: zmq.Socket, first: int, n: int, resent: bool = False) -> None:
        _send_versions(feed, bodies, first, n, resent=resent)

    def settle(writer: LogWriter, count: int) -> None:
        wait_for(lambda: (writer.drain(), store.count())[1], lambda c: c == count, what=f"{count} events")

    try:
        with log_feed(tmp_path, store) as (feed, writer):
            assert writer.monitor.poll(5000)
            writer.handle_monitor()  # the connection's handshake: the first jump would be a reconnect's
            send(feed, 1, 2)
            settle(writer, 2)
            send(feed, 7, 2)  # versions 3..6 lost
            settle(writer, 4)
            send(feed, 10, 1)  # and 9: a second record, so a replacement of the first gets a new id
            settle(writer, 5)
            assert (writer.lost, writer.gap_count) == (5, 2)
            send(feed, 3, 2, resent=True)
            settle(writer, 7)
            assert (writer.lost, writer.gap_count) == (3, 2)
            send(feed, 5, 2, resent=True)
            settle(writer, 9)
        assert [(g["first_missing"], g["last_missing"]) for g in store.gaps()] == [(9, 9)]
        assert (writer.lost, writer.gap_count, writer.written) == (1, 1, 9)
    finally:
        store.close()


def test_a_gap_filled_by_a_batch_the_disk_first_refused_is_no_longer_a_gap(tmp_path: Path) -> None:
    """Events sent again for a gap, in a batch the disk refused at first (here: another connection
    holds SQLite's write lock): the retry wrote them, but the gap's record was only updated after a
    first-time write, so it kept listing versions the log holds; and since run rows, a second
    re-send of them writes nothing (all held), which left it so for good."""
    store = EventStore(tmp_path / "events.db")
    store.conn.execute("PRAGMA busy_timeout=50")  # a refused write shows at once, not after 5 s
    bodies = {v: encode_body({"v": v}, source="t", session_id="s", ts=float(v)) for v in range(1, 6)}

    def send(feed: zmq.Socket, first: int, n: int, resent: bool = False) -> None:
        _send_versions(feed, bodies, first, n, resent=resent)

    try:
        with log_feed(tmp_path, store) as (feed, writer):
            assert writer.monitor.poll(5000)
            writer.handle_monitor()
            send(feed, 1, 2)
            wait_for(lambda: (writer.drain(), store.count())[1], lambda c: c == 2, what="2 events")
            send(feed, 5, 1)  # 3..4 lost
            wait_for(lambda: (writer.drain(), store.count())[1], lambda c: c == 3, what="3 events")
            assert (writer.lost, writer.gap_count) == (2, 1)
            other = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # the disk refuses the log's next write
            send(feed, 3, 2, resent=True)
            wait_for(lambda: (writer.drain(), writer.retry_at)[1], lambda at: at is not None,
                     what="a refused write")
            other.execute("ROLLBACK")
            other.close()
            writer.retry_at = time.monotonic()  # due now (WRITE_RETRY is 1 s)
            wait_for(lambda: (writer.drain(), store.count())[1], lambda c: c == 5, what="the retry")
            send(feed, 3, 2, resent=True)  # the broker sends them again: all held
            wait_for(lambda: (writer.drain(), writer.resent)[1], lambda n: n == 2, what="the second re-send")
        assert store.gaps() == []
        assert (writer.lost, writer.gap_count, writer.written) == (0, 0, 5)
    finally:
        store.close()


def test_a_resend_of_events_held_already_updates_a_gap_left_listing_them(tmp_path: Path) -> None:
    """A log killed between writing events sent again and updating the gap they filled (two
    transactions) restarts with a record listing versions it holds; the broker sends them again
    (the log had not acked them). Since run rows those are all dropped as held, nothing is written,
    and the record was only updated after a write: it stayed."""
    store = EventStore(tmp_path / "events.db")
    bodies = {v: encode_body({"v": v}, source="t", session_id="s", ts=float(v)) for v in range(1, 6)}
    store.append([(v, "t:run", v, float(v), "t", "s", bodies[v], None, None) for v in range(1, 6)])
    store.record_gap("lost", 3, 4)  # what the killed process left
    try:
        with log_feed(tmp_path, store) as (feed, writer):
            chosen = [bodies[3], bodies[4]]
            feed.send_multipart([LOG_RESEND + b"t:run", RESEND_STAMP_PAD + run_stamp(3, 3, [len(b) for b in chosen]),
                                 b"".join(chosen)])
            wait_for(lambda: (writer.drain(), writer.resent)[1], lambda n: n == 1, what="the re-send")
        assert store.gaps() == []
        assert (writer.written, store.count()) == (0, 5)
    finally:
        store.close()


def test_malformed_runs_are_counted_and_a_huge_run_is_kept_whole(tmp_path: Path) -> None:
    """Runs a broker could send by mistake: a non-UTF-8 topic, a zero-length body, lengths that do
    not add up, a NaN ts, a body shorter than the first's header; then a run of 20,000 events.
    None crashes the log; each bad event (or message, for lengths that do not add up) is counted
    malformed; the rest is written once."""
    def body(i: int, ts: float = 5.0) -> bytes:
        return encode_body({"i": i}, source="t", session_id="s", ts=ts)

    good = [body(i) for i in range(2)]
    messages = [
        [b"\xff\xfe", run_stamp(1, 1, [len(b) for b in good]), b"".join(good)],  # 2 malformed
        [b"t:x", run_stamp(3, 3, [len(good[0]), 0]), good[0]],  # 1 malformed, 1 written
        [b"t:x", run_stamp(5, 5, [len(good[0]), len(good[1]) + 1]), b"".join(good)],  # 1 malformed
        [b"t:x", run_stamp(7, 7, [len(good[0]), len(good[1])]), good[0] + body(1, float("nan"))],  # both written
        [b"t:x", run_stamp(9, 9, [len(good[0]), 5]), good[0] + good[1][:5]],  # 1 malformed, 1 written
    ]
    many = [body(i, 5.0 + i) for i in range(20_000)]
    messages.append([b"t:x", run_stamp(11, 11, [len(b) for b in many]), b"".join(many)])

    def check(writer: LogWriter, store: EventStore) -> None:
        assert writer.malformed == 5
        assert writer.written == store.count() == 4 + 20_000
        rows, _, _ = store.page(since=10, until=None, limit=30_000)
        assert [bytes(r[3]) for r in rows] == many
        rows, _, _ = store.page(since=0, until=None, limit=30_000, ts_from=20_004.0)
        assert [r[0] for r in rows] == list(range(11 + 19_999, 11 + 20_000))

    _feed(tmp_path, messages, 11 + 20_000 - 1, check)
