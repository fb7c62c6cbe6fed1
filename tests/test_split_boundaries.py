"""The bounded message size at its edges (broker/bus/split.py): single events and events inside
batches of exactly, and one byte over, what fits whole and what k fragments hold, 4096 tiny events
in one batch, with and without runs; every kind of reader gets them whole, in order, once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import msgpack
import pytest
import zmq

import sdk
from broker.bus.config import BOUNDED_BYTES, message_bytes
from helpers import raw_publisher, stats, wait_logged
from schemas.endpoints import Endpoints
from schemas.envelope import STAMP, encode_batch
from schemas.fragments import FRAGMENT
from tests.fronts import Front

LIMIT = message_bytes(BOUNDED_BYTES)
ALONE = LIMIT - STAMP.size
PART = LIMIT - FRAGMENT.size


def body_of(size: int, session: str | None = None, tag: int = 0) -> tuple[bytes, bytes]:
    """An SDK-shaped body of exactly ``size`` bytes, and its payload."""
    for n in range(size, 0, -1):
        payload = tag.to_bytes(4, "big") + os.urandom(max(n - 4, 0))
        payload = payload[:n]
        body = msgpack.packb([1, 1700000000.0, "raw", session, payload], use_bin_type=True)
        if len(body) == size:
            return body, payload
        if len(body) < size:
            break
    raise AssertionError(size)


SINGLES = [ALONE - 1, ALONE, ALONE + 1, PART, PART + 1, 2 * PART, 2 * PART + 1, 3 * PART - 1, 100]


def publish_all(home: Path, ctx: zmq.Context) -> list[tuple[str, bytes, str | None]]:
    pub = raw_publisher(ctx, Endpoints.for_home(home).publish)
    sent = []
    for i, size in enumerate(SINGLES):
        body, payload = body_of(size, "s1", i)
        pub.send_multipart([b"rt:one", body])
        sent.append(("rt:one", payload, "s1"))
    # batches: a big event among small ones, one at each boundary
    for big in (ALONE, ALONE + 1, 2 * PART + 1, LIMIT - 4 - 16 - 100):
        bodies, items = [], []
        for j, size in enumerate([100, 200, big, 50, LIMIT - 16 - 4 * 2 - 60, 60, big, 10_000]):
            body, payload = body_of(size, "s1", j)
            bodies.append(body)
            items.append(("rt:batch", payload, "s1"))
        pub.send_multipart(encode_batch("rt:batch", bodies))
        sent += items
    # a batch of 4096 tiny events
    bodies, items = [], []
    for j in range(4096):
        body, payload = body_of(40, "s1", j)
        bodies.append(body)
        items.append(("rt:tiny", payload, "s1"))
    pub.send_multipart(encode_batch("rt:tiny", bodies))
    sent += items
    pub.close(linger=5000)
    return sent


@pytest.mark.parametrize("max_run", ["128", "1"])
def test_events_and_batches_at_the_bounds_arrive_whole(home: Path, start, front: Front, max_run: str) -> None:
    start("broker", "--sub-bytes", str(BOUNDED_BYTES), "--max-run", max_run)
    start("event-log")
    ctx = zmq.Context()
    try:
        with front.connect(home, name="rt", timeout=10) as bus:
            with bus.subscribe("rt:**", hwm=100_000) as sub, bus.subscribe(
                "rt:**", session_id="s1", hwm=100_000
            ) as ssub, bus.subscribe(policy="count", hwm=100_000) as every:
                sent = publish_all(home, ctx)
                got = [sub.recv(timeout=10) for _ in sent]
                in_session = [ssub.recv(timeout=10) for _ in sent]
                all_ = [every.recv(timeout=10) for _ in sent]
                assert sub.recv_many(timeout=0.2) == []
                assert sub.lost == 0 and ssub.lost == 0 and every.lost == 0
                assert sub.malformed == 0 and ssub.malformed == 0
            assert [(e.type, e.payload, e.session_id) for e in got] == sent
            first = got[0].version
            assert [e.version for e in got] == list(range(first, first + len(sent)))
            for t in ("rt:one", "rt:batch", "rt:tiny"):
                seqs = [e.seq for e in got if e.type == t]
                assert seqs == list(range(1, len(seqs) + 1)), t
            assert [(e.version, e.payload, e.seq) for e in in_session] == [(e.version, e.payload, e.seq) for e in got]
            assert [(e.version, e.payload) for e in all_] == [(e.version, e.payload) for e in got]
            wait_logged(bus, got[-1].version)
            replayed = list(bus.replay("rt:**"))
            assert [(e.version, e.seq, e.payload) for e in replayed] == [(e.version, e.seq, e.payload) for e in got]
            with bus.subscribe("rt:**", policy="recover", since=0, timeout=10) as rec:
                again = [rec.recv(timeout=10) for _ in sent]
            assert [(e.version, e.payload) for e in again] == [(e.version, e.payload) for e in got]
        assert stats(ctx, Endpoints.for_home(home).control)["malformed"] == 0
    finally:
        ctx.destroy(linger=0)


def test_a_log_killed_and_restarted_is_sent_them_again_whole(home: Path, start) -> None:
    """The log stopped, then killed, while they are stamped: the broker keeps them (--await-log)
    and sends them again (LOG_RESEND, durable.py) to the new log, in fragments and split runs."""
    start("broker", "--sub-bytes", str(BOUNDED_BYTES), "--await-log", "5")
    log = start("event-log")
    ctx = zmq.Context()
    try:
        with sdk.connect(home, name="rt", timeout=10) as bus:
            with bus.subscribe("rt:**", hwm=100_000) as sub:
                bus.publish("rt:warm", b"x")
                wait_logged(bus, 1)
                log.signal(signal.SIGSTOP)
                sent = publish_all(home, ctx)
                got = [sub.recv(timeout=10) for _ in range(len(sent) + 1)][1:]
            log.signal(signal.SIGKILL)
            log.kill()
            start("event-log")
            wait_logged(bus, got[-1].version)
            replayed = [e for e in bus.replay("rt:**") if e.type != "rt:warm"]
            assert [(e.version, e.seq, e.payload) for e in replayed] == [(e.version, e.seq, e.payload) for e in got]
            assert bus.log_stats()["resent"] > 0
    finally:
        ctx.destroy(linger=0)
