"""Batches (issue 18): ``publish_many`` / ``batch()`` send runs of events as one message (PROTOCOL.md
§4.2) that the broker stamps as consecutive versions; ``recv_many`` hands over what has arrived.
Versions, topic sequences, loss recovery, ``since=`` and the event log stay exact per event."""

from __future__ import annotations

import struct

import msgpack
import pytest
import zmq

import sdk
from helpers import raw_publisher, wait_logged, wait_stats
from schemas.endpoints import Endpoints
from schemas.envelope import MAX_BATCH_EVENTS, encode_batch
from tests.fronts import Front


def recv_all(sub, n: int, *, max: int = 4096) -> list[sdk.Event]:
    """Exactly ``n`` events through ``recv_many`` (each call waits at most 10 s)."""
    got: list[sdk.Event] = []
    while len(got) < n:
        events = sub.recv_many(max=max, timeout=10)
        assert events, f"only {len(got)} of {n} events arrived"
        assert len(events) <= max
        got += events
    return got


def test_batches_are_stamped_as_if_published_one_by_one(home, broker, front: Front) -> None:
    with front.connect(home, name="batcher") as bus:
        with bus.subscribe() as sub:
            bus.publish("a:one", "first")
            events = [("a:one", {"i": i}) for i in range(5000)]  # over one batch's 4096 events
            events += [("b:two", i, "s-1") for i in range(3)] + [("a:one", "last")]
            assert bus.publish_many(events) == 5004
            bus.publish("b:two", "after")
            got = recv_all(sub, 5006, max=700)
            assert sub.recv_many(timeout=0.05) == []
    assert [e.version for e in got] == list(range(1, 5007))
    assert [(e.type, e.seq) for e in got[:2]] == [("a:one", 1), ("a:one", 2)]
    assert [e.payload["i"] for e in got[1:5001]] == list(range(5000))
    assert [(e.type, e.seq, e.payload, e.session_id) for e in got[5001:]] == [
        ("b:two", 1, 0, "s-1"), ("b:two", 2, 1, "s-1"), ("b:two", 3, 2, "s-1"),
        ("a:one", 5002, "last", None), ("b:two", 4, "after", None),
    ]
    assert {e.source for e in got} == {"batcher"}


def test_the_batch_block_publishes_when_it_ends_and_discards_on_error(home, broker, front: Front) -> None:
    with front.connect(home, name="test") as bus:
        with bus.subscribe("t:**") as sub:
            with bus.batch() as batch:
                for i in range(3):
                    batch.publish("t:kept", i)
                batch.flush()
                assert [e.payload for e in recv_all(sub, 3)] == [0, 1, 2]
                batch.publish("t:kept", 3)
            assert [e.payload for e in recv_all(sub, 1)] == [3]
            with pytest.raises(RuntimeError):
                with bus.batch() as batch:
                    batch.publish("t:discarded", 1)
                    raise RuntimeError("the block failed")
            bus.publish("t:marker", None)
            assert [(e.type, e.version) for e in recv_all(sub, 1)] == [("t:marker", 5)]


def test_publish_many_checks_every_event_before_sending_any(home, broker, front: Front) -> None:
    with front.connect(home, name="test") as bus:
        with bus.subscribe() as sub:
            with pytest.raises(sdk.InvalidEvent):
                bus.publish_many([("ok:one", 1), ("not a type", 2)])
            with pytest.raises(sdk.InvalidEvent):
                bus.publish_many([("ok:one", 1), ("ok:two", object())])
            with pytest.raises(sdk.InvalidEvent):
                bus.publish_many([("ok:one",)])
            with pytest.raises(ValueError):
                sub.recv_many(max=0)
            bus.publish("ok:marker", None)
            assert [(e.type, e.version) for e in recv_all(sub, 1)] == [("ok:marker", 1)]


def test_a_stalled_subscriber_recovers_batched_events_exactly(start, front: Front) -> None:
    start("broker", "--sub-hwm", "5")
    log = start("event-log")
    n, per = 20_000, 20
    with front.connect(log.home, name="test") as bus:
        with bus.subscribe(policy="recover", hwm=5) as sub:
            for start_at in range(0, n, per):  # 1,000 messages of ~4.6 KB, never read meanwhile
                bus.publish_many([("trace:event", {"i": i, "pad": "x" * 200}) for i in range(start_at, start_at + per)])
            wait_logged(bus, n)
            got = recv_all(sub, n)
            assert sub.recovered > 0  # the queues really overflowed
            assert sub.lost == 0
            assert sub.recv_many(timeout=0.1) == []
    assert [e.version for e in got] == list(range(1, n + 1))
    assert [e.seq for e in got] == list(range(1, n + 1))
    assert [e.payload["i"] for e in got] == list(range(n))


def test_since_and_the_log_see_each_batched_event(start, front: Front) -> None:
    start("broker")
    log = start("event-log")
    with front.connect(log.home, name="test") as bus:
        bus.publish_many([("log:a" if i % 2 else "log:b", i) for i in range(1000)])  # 1,000 one-event batches
        bus.publish_many([("log:a", i) for i in range(1000, 2000)])
        wait_logged(bus, 2000)
        assert [e.version for e in bus.replay(since=0)] == list(range(1, 2001))
        with bus.subscribe("log:*", since=1500) as sub:
            bus.publish_many([("log:b", i) for i in range(2000, 2100)])
            got = recv_all(sub, 600)
            assert sub.recv_many(timeout=0.1) == []
        stats = bus.log_stats()
    assert [e.version for e in got] == list(range(1501, 2101))
    assert [e.payload for e in got] == list(range(1500, 2100))
    assert [e.seq for e in got if e.type == "log:b"][-2:] == [599, 600]
    assert stats["gaps"] == 0 and stats["lost"] == 0


def test_malformed_batches_are_counted_and_skipped(home, endpoints: Endpoints) -> None:
    body = msgpack.packb([1, 1.0, "raw", None, "ok"], use_bin_type=True)
    bad = [
        [b"\x03a:x", struct.pack("!I", len(body) + 1), body],  # lengths do not add up
        [b"\x03a:x", b"\x00\x00\x00", body],  # lengths not whole
        [b"\x03a:x", struct.pack("!2I", len(body), 0), body],  # an empty body
        [b"\x03a:x", struct.pack("!2I", 3, len(body) - 3), body],  # the second body has no mark
        [b"\x03not a type", struct.pack("!I", len(body)), body],
        [b"\x03a:x", b"", b""],
        [b"\x03a:x", struct.pack(f"!{MAX_BATCH_EVENTS + 1}I", *[1] * (MAX_BATCH_EVENTS + 1)), b"\x95" * (MAX_BATCH_EVENTS + 1)],
    ]
    with sdk.connect(home, name="test") as bus, bus.subscribe() as sub:
        ctx = zmq.Context()
        try:
            raw = raw_publisher(ctx, endpoints.publish)
            for frames in bad:
                raw.send_multipart(frames)
            raw.send_multipart([b"\x03a:x", body])  # two frames: not a batch
            raw.send_multipart(encode_batch("a:x", [body, body]))
            got = recv_all(sub, 2)
            stats = wait_stats(ctx, endpoints.control, lambda s: s["version"] == 2, what="the good batch stamped")
            raw.close(linger=0)
        finally:
            ctx.term()
        assert sub.recv_many(timeout=0.05) == []
    assert [(e.type, e.version, e.seq, e.payload) for e in got] == [("a:x", 1, 1, "ok"), ("a:x", 2, 2, "ok")]
    assert stats["malformed"] == 1
    assert stats["rejected"] == 1 + 1 + 2 + 2 + 1 + 1 + MAX_BATCH_EVENTS + 1
