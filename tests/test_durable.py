"""Identified publishing through real processes (issue 15 A): dedup, exact confirmations upstream,
the event log's acks, re-sending to a log killed under ``up``, dedup across a broker ``kill -9``,
and a full unlogged buffer holding publishers back.

Publishers here are raw pyzmq XPUB sockets that build the frames by hand from PROTOCOL.md §4.1,
as a client in another language would; confirmations are parsed by hand too.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import msgpack
import zmq

import sdk
from schemas.endpoints import Endpoints
from schemas.envelope import CONFIRM, LOG_ACK, LOG_MARK, MAX_RUN_BYTES, encode_body
from tests.helpers import control, logged_events, logged_numbers, raw_publisher, stats, wait_for, wait_stats
from tests.test_faults import Collector, Publishers
from tests.test_up import Up, pid_of

WANT_VERSION = 1 << 63
PID = 0xFEEDFACE_0000_0001  # top bit set: ids are u64, stored signed by the log


class RawPublisher:
    """An XPUB publisher speaking the identified publish and reading confirmations (PROTOCOL.md §4.1)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, pid: int, *, sndhwm: int = 1000) -> None:
        self.pid = pid
        self.through = 0
        self.versions: dict[int, int] = {}
        self.entries: list[tuple[int, list[tuple[int, int]]]] = []
        self.subscriptions: list[bytes] = []
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.linger = 0
        self.sock.sndhwm = sndhwm
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        # A connection keeps its pipe across a reconnect, so only a repeated subscription (seen
        # with VERBOSE) tells that a restarted broker is taking events.
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.sndtimeo = 30_000  # a send waits while a restarted broker awaits the log (up, under load)
        self.sock.connect(endpoint)
        self.until(lambda: self.subscriptions[-1:] == [b"\x01"], what="the broker's subscription")

    def send(self, number: int, payload: Any, *, want_version: bool = False, type: str = "durable:test") -> None:
        """An identified body by hand (PROTOCOL.md §4.1): the 5-element array's fields under a
        7-element header, then publisher id and number as two msgpack uint64s."""
        body = msgpack.packb([1, time.time(), "raw", None, payload], use_bin_type=True)
        body = b"\x97" + body[1:] + struct.pack("!BQBQ", 0xCF, self.pid, 0xCF, number | (WANT_VERSION if want_version else 0))
        self.sock.send_multipart([type.encode(), body])

    def send_batch(self, numbers: list[int], type: str = "durable:test", *, framed: bool = False) -> None:
        """A batch (PROTOCOL.md §4.2) numbered ``numbers``, payload {"n": number}: identified bodies,
        or (``framed``) anonymous bodies and the identity once, in a fourth frame."""
        bodies = []
        for number in numbers:
            body = msgpack.packb([1, time.time(), "raw", None, {"n": number}], use_bin_type=True)
            bodies.append(body if framed else b"\x97" + body[1:] + struct.pack("!BQBQ", 0xCF, self.pid, 0xCF, number))
        frames = [b"\x03" + type.encode(), struct.pack(f"!{len(bodies)}I", *map(len, bodies)), b"".join(bodies)]
        if framed:
            frames.append(struct.pack("!QQ", self.pid, numbers[0]))
        self.sock.send_multipart(frames)

    def read(self, timeout: float) -> bool:
        """Take one upstream message (a confirmation or the broker's (un)subscription); False if
        none came within ``timeout``."""
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return False
        message = self.sock.recv()
        if message[:1] != b"\x02":
            self.subscriptions.append(message)
            return True
        pos = 1
        while pos < len(message):  # entries: !QQH (publisher, through, n), then n × !QQ (number, version)
            publisher, through, n = struct.unpack_from("!QQH", message, pos)
            pos += 18
            pairs = [struct.unpack_from("!QQ", message, pos + 16 * i) for i in range(n)]
            pos += 16 * n
            if publisher == self.pid:
                self.entries.append((through, pairs))
                self.through = max(self.through, through)
                self.versions.update(pairs)
        assert pos == len(message), "a confirmation's entries must fill it exactly"
        return True

    def until(self, done: Callable[[], bool], *, timeout: float = 10.0, what: str = "confirmations") -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"gave up waiting for {what}: through={self.through} entries={self.entries[-3:]}")
            self.read(left)

    def drain(self) -> None:
        while self.read(0):
            pass


def logged(home: Path, pid: int = PID) -> list[tuple[int, int]]:
    """(number, how many times) for every number of ``pid`` in the log, by number."""
    return sorted(Counter(number for _version, number in logged_numbers(home, pid)).items())


def test_identified_publishes_are_stamped_once_and_confirmed_exactly(home: Path, start) -> None:
    """No log: confirmed once stamped. A repeated number is not stamped again; the versions of the
    flagged events come back exactly as subscribers saw them."""
    start("broker")
    ep = Endpoints.for_home(home)
    with zmq.Context() as ctx, sdk.connect(home, name="t") as bus, bus.subscribe("durable:*", policy="count") as sub:
        pub = RawPublisher(ctx, ep.publish, PID)
        for n in range(1, 11):
            pub.send(n, {"n": n}, want_version=n % 2 == 0)
        pub.send(4, {"n": 4}, want_version=True)  # a repeat: confirmed again, never stamped twice
        pub.send(11, {"n": 11})
        anonymous = encode_body({"n": "anonymous"}, source="t", session_id=None)
        pub.sock.send_multipart([b"durable:test", anonymous])  # the 2-frame publish is unchanged
        events = [sub.recv(timeout=5) for _ in range(12)]
        # (the broker takes turns between connections: the anonymous one may come anywhere)
        assert [e.payload["n"] for e in events if e.source == "raw"] == list(range(1, 12))
        assert [e.payload["n"] for e in events if e.source == "t"] == ["anonymous"]
        events = [e for e in events if e.source == "raw"]
        assert [e.publisher for e in events] == [(PID, n) for n in range(1, 12)]  # as published, want_version off
        assert sub.lost == 0
        pub.until(lambda: pub.through == 11)
        version = {e.payload["n"]: e.version for e in events}
        assert pub.versions == {n: version[n] for n in (2, 4, 6, 8, 10)}

        pub.send(11, {"n": 11}, want_version=True)  # the highest again: its version comes back
        pub.until(lambda: any((11, version[11]) in pairs for _t, pairs in pub.entries), what="11's version")
        durable = stats(ctx, ep.control)["durable"]
        assert (durable["identified"], durable["duplicates"], durable["logging"]) == (11, 2, False)
        bus.publish("durable:test", {"n": "marker"})
        assert sub.recv(timeout=5).payload["n"] == "marker"  # nothing stamped between

        rejected = stats(ctx, ep.control)["rejected"]
        bad = encode_body({"n": "bad"}, source="raw", session_id=None, identity=(PID, 12))
        pub.sock.send_multipart([b"durable:test", bad[:-9] + b"\xce" + bad[-8:]])  # not two uint64s
        pub.send(12, {"n": 12}, type="Not A Type")  # refused before stamping: 12 is used up
        pub.send(13, {"n": 13}, want_version=True)
        event = sub.recv(timeout=5)
        assert (event.payload["n"], event.publisher) == (13, (PID, 13))
        pub.until(lambda: pub.through == 13 and 13 in pub.versions)
        assert stats(ctx, ep.control)["rejected"] == rejected + 2


def test_an_identified_batch_is_stamped_whole_once(home: Path, start) -> None:
    """A batch of identified bodies (PROTOCOL.md §4.2) is one publisher's consecutive numbers,
    stamped all or none: sent again it is confirmed again, never stamped twice; one past a hole,
    or whose numbers are not consecutive, is refused."""
    start("broker")
    ep = Endpoints.for_home(home)
    with zmq.Context() as ctx, sdk.connect(home, name="t") as bus, bus.subscribe("durable:*", policy="count") as sub:
        pub = RawPublisher(ctx, ep.publish, PID)
        pub.send_batch(list(range(1, 101)))
        events = [sub.recv(timeout=5) for _ in range(100)]
        assert [e.publisher for e in events] == [(PID, n) for n in range(1, 101)]
        assert [e.version for e in events] == list(range(events[0].version, events[0].version + 100))
        pub.until(lambda: pub.through == 100)
        pub.send_batch(list(range(1, 101)))  # sent again whole: confirmed again
        pub.send_batch(list(range(51, 101)))  # its tail alone, as a resend one by one might leave it
        pub.send_batch([102, 103])  # past a hole (101): refused, to be sent again in order
        rejected = stats(ctx, ep.control)["rejected"]
        pub.send_batch([101, 103])  # not consecutive: not a batch
        pub.send_batch(list(range(101, 111)))
        pub.send(111, {"n": 111}, want_version=True)
        events = [sub.recv(timeout=5) for _ in range(11)]
        assert [e.payload["n"] for e in events] == list(range(101, 112))
        pub.until(lambda: pub.through == 111 and 111 in pub.versions)
        now = stats(ctx, ep.control)
        assert now["rejected"] == rejected + 2
        assert (now["durable"]["identified"], now["durable"]["duplicates"], now["durable"]["out_of_order"]) == (111, 150, 1)
        bus.publish("durable:test", {"n": "marker"})
        assert sub.recv(timeout=5).payload["n"] == "marker"  # nothing stamped between

        pub.send_batch(list(range(112, 122)), framed=True)  # the identity in a frame of its own
        pub.send_batch(list(range(112, 122)), framed=True)  # again: confirmed again
        pub.send_batch(list(range(122, 124)), framed=True)
        events = [sub.recv(timeout=5) for _ in range(12)]
        assert [e.payload["n"] for e in events] == list(range(112, 124))
        assert [e.publisher for e in events] == [None] * 12  # the bodies are anonymous
        pub.until(lambda: pub.through == 123)
        assert stats(ctx, ep.control)["durable"]["duplicates"] == 160
        assert sub.lost == 0


def test_with_an_event_log_confirmation_waits_for_its_ack(home: Path, start) -> None:
    """With a log, an event is confirmed once the log has it on disk: a stopped log holds every
    confirmation back; once it runs, confirmations arrive for events the log already has, and
    the log knows the publisher of each (``publishers``)."""
    start("broker", "--await-log", "30")
    log = start("event-log")
    ep = Endpoints.for_home(home)
    with zmq.Context() as ctx:
        pub = RawPublisher(ctx, ep.publish, PID)
        pub.send(1, {"n": 1}, want_version=True)
        pub.until(lambda: pub.through == 1)
        sent = stats(ctx, ep.control)["durable"]["confirmations"]
        log.signal(signal.SIGSTOP)
        try:
            for n in (2, 3, 4):
                pub.send(n, {"n": n}, want_version=True)
            held = wait_stats(ctx, ep.control, lambda s: s["durable"]["unconfirmed"] == 3, what="3 stamped")
            assert held["durable"]["confirmations"] == sent  # the broker sent nothing for them
            pub.drain()
            assert pub.through == 1
        finally:
            log.signal(signal.SIGCONT)
        pub.until(lambda: pub.through == 4)
        reply = control(ctx, ep.log, {"op": "stats"})["result"]
        assert reply["last"] >= max(pub.versions.values())  # on disk before the confirmation
        assert sorted(pub.versions) == [1, 2, 3, 4]
        publishers = control(ctx, ep.log, {"op": "publishers", "since": 0})["result"]["publishers"]
        assert publishers == [[PID, 4, pub.versions[4]]]
    assert logged(home) == [(n, 1) for n in range(1, 5)]


def test_a_log_slow_to_ack_after_the_wait_still_holds_confirmations_back(home: Path, start) -> None:
    """A log that subscribed but has not acked when the broker's wait ends is slow, not gone: the
    broker takes events (asking it first who published what), keeps them, and confirms them only
    once the log acks. Confirmed at stamping, they were lost when that broker was killed before
    the log had them (seen once: 1,029 confirmed events missing from the log after kill -9)."""
    start("broker", "--await-log", "1")
    ep = Endpoints.for_home(home)
    with zmq.Context() as ctx:
        feed = ctx.socket(zmq.XSUB)  # the log, by hand (PROTOCOL.md "Event log"), that never acks
        feed.linger = 0
        feed.connect(ep.log_feed)
        feed.send(b"\x01")
        feed.send(b"\x01" + LOG_MARK)
        queries = ctx.socket(zmq.REP)
        queries.linger = 0
        queries.bind(ep.log)
        try:
            assert queries.poll(30_000), "the broker never asked the log who published what"
            request = msgpack.unpackb(queries.recv())
            assert request["op"] == "publishers"
            queries.send(msgpack.packb({"ok": True, "result": {"publishers": [], "last": 0}}))
            pub = RawPublisher(ctx, ep.publish, PID)  # its subscription: the broker takes events
            pub.send(1, {"n": 1}, want_version=True)
            held = wait_stats(ctx, ep.control, lambda s: s["durable"]["unconfirmed"] == 1, what="1 stamped")
            assert held["durable"]["confirmations"] == 0
            version = None
            while version is None:  # the event reached the log; no confirmation reached the publisher
                assert feed.poll(10_000), "the log got no event"
                topic, stamp, _body = feed.recv_multipart()
                if topic == b"durable:test":
                    version = struct.unpack("!QQ", stamp)[0]
            pub.drain()
            assert pub.through == 0
            feed.send(LOG_ACK.pack(CONFIRM, version))  # its hello, at last
            pub.until(lambda: pub.through == 1)
            assert pub.versions == {1: version}
        finally:
            feed.close()
            queries.close()


def test_event_log_kill_9_three_times_under_up_loses_nothing_subscribers_got(home: Path) -> None:
    """The issue's done-means: under steady publishing, kill -9 the event log three times; it ends
    with exactly the events a ``count`` subscriber received, and no gap (the broker kept what the
    log had not acked and sent it again)."""
    up = Up(home)
    try:
        up.wait_ready()
        with sdk.connect(home, name="t", timeout=10) as bus:
            # "**": it also receives what the broker sends the log again, and must skip it
            collector = Collector(bus, "**", policy="count")
            publishers = Publishers(home, ["a", "b"], rate=400)
            resent: list[int] = []
            try:
                for kill in range(3):
                    target = len(collector.versions) + 200
                    wait_for(lambda: len(collector.versions), lambda n: n >= target, timeout=20, what="progress")
                    old = pid_of(home, "event-log")
                    os.kill(old, signal.SIGKILL)
                    wait_for(lambda: pid_of(home, "event-log"), lambda p: p not in (0, old), timeout=30,
                             what=f"the event log restarted ({kill + 1})")
                    new = wait_for(bus.log_stats, lambda s: s["pid"] != old, timeout=30, what="the new log answering")
                    resent.append(new["resent"])
            finally:
                reports = publishers.stop()
            sent = sum(r["sent"] for r in reports.values())
            wait_for(lambda: len(collector.versions), lambda n: n >= sent, timeout=30, what="every event received")
            collector.close()
            assert (collector.sub.lost, collector.sub.malformed) == (0, 0)
            final = wait_for(bus.log_stats, lambda s: s["last"] >= max(collector.versions), what="the log caught up")
            assert (final["missing"], final["gap_records"]) == (0, 0), (final["recent_gaps"], up.output)
            print(f"\nevents the broker sent each restarted log again (so far at its first answer): {resent}")
    finally:
        up.kill()
    in_log = [version for version, _type, _body in logged_events(home, "load:%")]
    assert in_log == sorted(collector.versions)
    assert len(in_log) == sent


def test_broker_kill_9_under_up_a_resent_event_is_stamped_once(home: Path) -> None:
    """The broker killed twice: once after confirming everything (the publisher then sends it all
    again: the new broker knows every number from the log), once in mid-stream (the publisher sends
    again what was not confirmed). Every number is in the log exactly once."""
    up = Up(home)
    try:
        up.wait_ready()
        ep = Endpoints.for_home(home)
        with zmq.Context() as ctx:
            pub = RawPublisher(ctx, ep.publish, PID)
            for n in range(1, 201):
                pub.send(n, {"n": n})
            pub.until(lambda: pub.through == 200)

            def kill_broker() -> None:
                seen = len(pub.subscriptions)
                os.kill(pid_of(home, "broker"), signal.SIGKILL)
                pub.until(lambda: pub.subscriptions[seen:] == [b"\x01"], timeout=30, what="a new broker")

            kill_broker()
            for n in range(1, 301):  # all again: the first 200 are known to the new broker
                pub.send(n, {"n": n})
            pub.until(lambda: pub.through == 300)
            assert stats(ctx, ep.control)["durable"]["duplicates"] == 200

            for n in range(301, 2301):
                pub.send(n, {"n": n})
            kill_broker()
            for n in range(pub.through + 1, 2401):
                pub.send(n, {"n": n})
            pub.until(lambda: pub.through == 2400, timeout=20)
    finally:
        up.kill()
    assert logged(home) == [(n, 1) for n in range(1, 2401)]


def test_past_max_publishers_the_least_recently_seen_is_forgotten(home: Path, start) -> None:
    """--max-publishers 2: the broker remembers two publishers' numbers; a third makes it forget
    the one seen least recently (a publisher is moved to the most recent once it was not moved
    within the last N versions), so that one's event sent again is stamped again, while the
    other's is still refused as a repeat."""
    start("broker", "--await-log", "30", "--max-publishers", "2")
    start("event-log")
    ep = Endpoints.for_home(home)
    with zmq.Context() as ctx:
        p1, p2, p3 = (RawPublisher(ctx, ep.publish, PID + i) for i in range(3))
        for pub, numbers in ((p1, [1]), (p2, [1]), (p1, [2, 3]), (p3, [1])):
            for n in numbers:
                pub.send(n, {"n": n})
            pub.until(lambda: pub.through == numbers[-1])  # v1 p1, v2 p2, v3-4 p1 (moved at v4), v5 p3
        p1.send(3, {"n": 3})  # remembered: confirmed again, not stamped
        p2.send(1, {"n": 1})  # forgotten when p3 came: stamped again
        wait_stats(ctx, ep.control, lambda s: s["version"] == 6 and s["durable"]["duplicates"] == 1,
                   what="p2's repeat stamped, p1's refused")
        final = wait_for(lambda: control(ctx, ep.log, {"op": "stats"})["result"], lambda s: s["last"] == 6,
                         what="the log at version 6")
        assert final["events"] == 6
    assert [logged(home, PID + i) for i in range(3)] == [[(1, 1), (2, 1), (3, 1)], [(1, 2)], [(1, 1)]]


def test_a_full_unlogged_buffer_blocks_publishers_and_loses_nothing(home: Path, start) -> None:
    """--log-budget bytes: with the log stopped, the broker stamps until its buffer for the log is
    full, then reads no publisher, whose send blocks; once the log runs, every event is logged once."""
    start("broker", "--await-log", "30", "--log-budget", "20000", "--in-hwm", "10")
    log = start("event-log")
    ep = Endpoints.for_home(home)
    payload = {"pad": "x" * 1000}
    with zmq.Context() as ctx:
        pub = RawPublisher(ctx, ep.publish, PID, sndhwm=10)
        pub.sock.sndtimeo = 300  # a blocked send gives up: the proof that it blocks
        log.signal(signal.SIGSTOP)
        sent = 0
        try:
            while True:
                try:
                    pub.send(sent + 1, {"n": sent + 1, **payload})
                except zmq.Again:
                    break
                sent += 1
                assert sent < 1000, "the publisher never blocked"
            held = stats(ctx, ep.control)
            # full, and past the budget by at most the run that filled it (PROTOCOL.md §4.2)
            assert 20000 <= held["durable"]["unlogged_bytes"] <= 20000 + MAX_RUN_BYTES + 2 * 1300
            assert held["version"] == held["durable"]["unlogged_events"]
        finally:
            log.signal(signal.SIGCONT)
        pub.sock.sndtimeo = 5000
        for n in range(sent + 1, 301):
            pub.send(n, {"n": n, **payload})
        pub.until(lambda: pub.through == 300)
        log_stats = control(ctx, ep.log, {"op": "stats"})["result"]
        assert (log_stats["events"], log_stats["missing"]) == (300, 0)
    assert logged(home) == [(n, 1) for n in range(1, 301)]


def test_an_old_events_db_gains_the_publisher_columns(home: Path) -> None:
    """A log written before identified publishing opens as it was, with pub_id/pub_num added (NULL)."""
    from broker.eventlog.store import EventStore

    db = sqlite3.connect(home / "events.db")
    db.execute("CREATE TABLE events (version INTEGER PRIMARY KEY, type TEXT NOT NULL, topic_seq INTEGER NOT NULL,"
               " ts FLOAT, source TEXT, session_id TEXT, body BLOB NOT NULL)")
    db.execute("INSERT INTO events VALUES (1, 'a:b', 1, 0.0, 's', NULL, ?)", (msgpack.packb([1, 0.0, "s", None, 1]),))
    db.commit()
    db.close()
    with EventStore(home / "events.db") as store:
        assert store.conn.execute("SELECT version, pub_id, pub_num FROM events").fetchall() == [(1, None, None)]
        assert store.publishers(since=0, limit=10) == []
