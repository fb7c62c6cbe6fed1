"""The event log keeps a run of events that share type, ts, source and session id (a batch from
``publish_many``) as one row (broker/eventlog/store.py); every reader sees its events one by one.

The first tests drive the store and the log's ingest in-process (a real SQLite file; for the
ingest, real ZeroMQ sockets with the broker's frames made by hand, PROTOCOL.md "Event log"), the
last one a real broker, log and SDK.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import zmq

import sdk
from broker.eventlog.query import LogQueries
from broker.eventlog.store import EventStore
from broker.eventlog.writer import LogWriter
from schemas.endpoints import Endpoints
from schemas.envelope import LOG_ID, LOG_IDS, LOG_RESEND, RESEND_STAMP_PAD, encode_body, run_stamp
from tests.helpers import control, wait_for


def _run(first: int, n: int, *, session: str | None = "s", ts: float = 5.0, step: float = 0.0, pub=(None, None)):
    bodies = [encode_body({"i": first + i}, source="t", session_id=session, ts=ts + i * step) for i in range(n)]
    sizes = struct.pack(f"!{n}I", *map(len, bodies))
    last = ts + (n - 1) * step
    return (first, "t:run", first, ts, "t", session, b"".join(bodies), *pub, n, sizes, last if step else None), bodies


def _single(version: int, *, session: str | None = None):
    body = encode_body({"i": version}, source="t", session_id=session, ts=float(version))
    return (version, "t:one", version, float(version), "t", session, body, None, None)


def test_a_run_row_reads_as_its_events_everywhere(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    try:
        run, bodies = _run(4, 6, pub=(-7, 42))
        store.append([_single(1), _single(2), _single(3), _single(10, session="s")], [run])
        assert (store.last_version(), store.count(), store.first_version()) == (10, 10, 1)
        assert store.present(5, 12) == [5, 6, 7, 8, 9, 10]
        assert store.present(2, 4) == [2, 3, 4]

        rows, next_since, exhausted = store.page(since=5, until=None, limit=2)
        assert [(v, seq, t) for v, seq, t, _ in rows] == [(6, 6, "t:run"), (7, 7, "t:run")]
        assert [bytes(b) for *_, b in rows] == bodies[2:4]
        assert (next_since, exhausted) == (7, False)
        rows, next_since, exhausted = store.page(since=7, until=8, limit=100)
        assert ([r[0] for r in rows], next_since, exhausted) == ([8], 8, True)
        rows, _, _ = store.page(since=0, until=None, limit=100, session_id="s")
        assert [r[0] for r in rows] == [4, 5, 6, 7, 8, 9, 10]
        rows, _, _ = store.page(since=0, until=None, limit=100, types=["t:one"])
        assert [r[0] for r in rows] == [1, 2, 3, 10]

        at = store.events_at([3, 5, 9, 11])
        assert sorted(at) == [3, 5, 9]
        assert at[5] == ("t:run", bodies[1], "s")
        assert store.publishers(since=0, limit=10) == [[(1 << 64) - 7, 42, 9]]

        assert store.trim(keep=5) == 5  # the cut falls inside the run: its last 4 events stay
        assert (store.count(), store.first_version(), store.last_version()) == (5, 6, 10)
        rows, _, _ = store.page(since=0, until=None, limit=100)
        assert [(r[0], r[1], bytes(r[3])) for r in rows][:4] == [(6 + i, 6 + i, bodies[2 + i]) for i in range(4)]
        assert store.publishers(since=0, limit=10) == [[(1 << 64) - 7, 42, 9]]
    finally:
        store.close()


def test_a_run_whose_events_have_their_own_ts_filters_each_by_its_own(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    try:
        run, bodies = _run(1, 10, ts=100.0, step=1.0)  # ts 100.0 .. 109.0
        store.append([], [run])
        rows, _, _ = store.page(since=0, until=None, limit=100, ts_from=103.0, ts_until=106.0)
        assert [r[0] for r in rows] == [4, 5, 6]
        rows, _, _ = store.page(since=0, until=None, limit=100, ts_from=108.5)
        assert [r[0] for r in rows] == [10]
        assert store.trim(max_age=time.time() - 103.5) == 4  # ts 100..103 are older than the horizon, 103.5
        assert (store.first_version(), store.count()) == (5, 6)
    finally:
        store.close()


@contextmanager
def log_feed(tmp_path: Path, store: EventStore) -> Iterator[tuple[zmq.Socket, LogWriter]]:
    """A real LogWriter on ``store``, subscribed over ZeroMQ to an XPUB that stands in for the
    broker (its frames made by hand, PROTOCOL.md "Event log"); both closed on the way out."""
    with zmq.Context() as ctx:
        feed = ctx.socket(zmq.XPUB)
        feed.linger = 0
        feed.bind(f"ipc://{tmp_path}/feed.sock")
        writer = LogWriter(ctx, store, f"ipc://{tmp_path}/feed.sock")
        try:
            assert feed.poll(5000) and feed.recv() == b"\x01"
            yield feed, writer
        finally:
            writer.close()
            feed.close()


def _frames(version: int, bodies: list[bytes], *, resent: bool = False) -> list[bytes]:
    stamp = run_stamp(version, version, [len(b) for b in bodies])
    if resent:
        return [LOG_RESEND + b"t:run", RESEND_STAMP_PAD + stamp, b"".join(bodies)]
    return [b"t:run", stamp, b"".join(bodies)]


def test_the_log_writes_a_run_as_one_row_when_it_can_and_a_resent_one_never_twice(tmp_path: Path) -> None:
    """A run whose bodies share source and session is one row (their ts may differ); one whose
    sessions differ is a row per event. Sent again (after a reconnect) in whatever shape, none is
    written twice."""
    store = EventStore(tmp_path / "events.db")
    with log_feed(tmp_path, store) as (feed, writer):
        shared = [encode_body({"i": i}, source="t", session_id="s", ts=7.0) for i in range(1, 9)]
        apart = [encode_body({"i": i}, source="t", session_id="s", ts=float(i)) for i in range(9, 13)]
        mixed = [encode_body({"i": i}, source="t", session_id=f"s{i}", ts=7.0) for i in range(13, 16)]
        sent = [_frames(1, shared), _frames(9, apart), _frames(13, mixed),
                _frames(1, shared, resent=True),  # all of it again: held as one row
                _frames(3, shared[2:6], resent=True),  # part of it, in another shape
                _frames(10, apart[1:], resent=True),
                _frames(13, mixed[:2], resent=True)]  # held as rows of their own
        for frames in sent:
            feed.send_multipart(frames)
        wait_for(lambda: (writer.drain(), writer.last_version)[1], lambda last: last == 15,
                 what="the log to write version 15")
        while writer.sock.poll(0):  # what is still queued: the resent runs
            writer.drain()
    try:
        assert (writer.stats()["written"], store.count(), writer.lost, writer.gap_count) == (15, 15, 0, 0)
        db = sqlite3.connect(tmp_path / "events.db")
        try:
            assert db.execute("SELECT version, n, ts, ts_last FROM events ORDER BY version").fetchall() == [
                (1, 8, 7.0, None), (9, 4, 9.0, 12.0), (13, None, 7.0, None), (14, None, 7.0, None),
                (15, None, 7.0, None)]
        finally:
            db.close()
        rows, _, _ = store.page(since=0, until=None, limit=100)
        assert [bytes(r[3]) for r in rows] == shared + apart + mixed
    finally:
        store.close()


def test_who_published_a_run_decides_its_rows_and_summaries_count_each_event_at_its_ts(tmp_path: Path) -> None:
    """A run of one publisher's consecutive numbers is one row (its last number kept); numbers
    with a hole, or two publishers, make a row per event. ``summary`` counts each event of a row
    at its own ts."""
    store = EventStore(tmp_path / "events.db")
    runs = {1: [(7, 11), (7, 12), (7, 13)], 4: [(7, 14), (7, 16)], 6: [(7, 17), (8, 1)]}
    with log_feed(tmp_path, store) as (feed, writer):
        for first, ids in runs.items():
            bodies = [encode_body({"i": first + i}, source="t", session_id="s", ts=100.0 + first + i)
                      for i in range(len(ids))]
            body = b"".join(LOG_ID.pack(first + i, pid, number) for i, (pid, number) in enumerate(ids))
            feed.send_multipart([LOG_IDS, bytes(16), body])
            feed.send_multipart(_frames(first, bodies))
        wait_for(lambda: (writer.drain(), writer.last_version)[1], lambda last: last == 7,
                 what="the log to write version 7")
    try:
        db = sqlite3.connect(tmp_path / "events.db")
        try:
            assert db.execute("SELECT version, n, pub_id, pub_num FROM events ORDER BY version").fetchall() == [
                (1, 3, 7, 13), (4, None, 7, 14), (5, None, 7, 16), (6, None, 7, 17), (7, None, 8, 1)]
        finally:
            db.close()
        assert store.publishers(since=0, limit=10) == [[7, 17, 6], [8, 1, 7]]
        queries = LogQueries(store, writer, {})
        reply = queries.handle({"op": "summary", "ts_from": 102.0, "ts_until": 105.0, "bucket": 2.0})
        assert reply["ok"], reply
        summary = reply["result"]
        assert (summary["events"], summary["first_version"], summary["last_version"]) == (3, 2, 4)
        assert (summary["first_ts"], summary["last_ts"]) == (102.0, 104.0)
        assert summary["buckets"] == [[102.0, "t:run", 2], [104.0, "t:run", 1]]
    finally:
        store.close()


def test_batched_sessions_replay_summarise_delete_and_import_exactly(home: Path, start) -> None:
    start("broker")
    start("event-log")
    with sdk.connect(home, name="test") as bus:
        bus.publish_many([("chat:msg", {"i": i}, "s-1") for i in range(300)])
        bus.publish_many([("chat:msg", {"i": i}, "s-2") for i in range(300, 400)])
        bus.publish_many([("chat:msg", {"i": i}, f"s-{1 + i % 2}") for i in range(400, 410)])
        wait_for(bus.log_stats, lambda s: s["last"] == 410, what="410 events logged")
        db = sqlite3.connect(home / "events.db")
        try:
            assert db.execute("SELECT count(*) FROM events").fetchone()[0] < 410  # runs are rows
        finally:
            db.close()
        replayed = list(bus.replay(since=150))
        assert [e.version for e in replayed] == list(range(151, 411))
        assert [e.payload["i"] for e in replayed] == list(range(150, 410))
        assert [e.payload["i"] for e in bus.replay(session_id="s-2")] == [*range(300, 400), *range(401, 410, 2)]
        with zmq.Context() as ctx:
            log = Endpoints.for_home(home).log
            summary = control(ctx, log, {"op": "summary", "session_id": "s-1"})["result"]
            assert (summary["events"], summary["by_type"], summary["last_version"]) == (305, {"chat:msg": 305}, 409)
            tail = control(ctx, log, {"op": "tail", "limit": 3, "session_id": "s-1"})["result"]["events"]
            assert [row[0] for row in tail] == [405, 407, 409]
            exported = list(bus.replay(session_id="s-1"))
            page = control(ctx, log, {"op": "replay", "session_id": "s-1", "limit": 1000})["result"]
            rows = [list(row) for row in page["events"]]
            assert [row[0] for row in rows] == [e.version for e in exported]
            assert control(ctx, log, {"op": "delete_session", "session_id": "s-1"})["result"] == {"deleted": 305}
            assert list(bus.replay(session_id="s-1")) == []
            reply = control(ctx, log, {"op": "import", "session_id": "s-1", "events": rows})["result"]
            assert reply == {"inserted": 305, "existing": 0}
            again = control(ctx, log, {"op": "import", "session_id": "s-1", "events": rows})["result"]
            assert again == {"inserted": 0, "existing": 305}
        assert [(e.version, e.payload) for e in bus.replay(session_id="s-1")] == [
            (e.version, e.payload) for e in exported]
        assert bus.log_stats()["events"] == 410
