"""Messages of a bounded size (issue 15, byte budgets): the broker delivers at most MESSAGE_BYTES of
stamp and body per message, so its per-subscriber queue, counted in messages by libzmq, holds a known
number of bytes. An event longer than that travels as fragments and arrives whole; a batch longer
than that arrives as several runs; a fragment lost in a full queue costs exactly that event, counted."""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

import msgpack
import zmq

import sdk
from helpers import raw_publisher, stats, wait_for, wait_logged
from schemas.endpoints import Endpoints
from schemas.envelope import STAMP, encode_batch
from broker.bus.config import BOUNDED_BYTES, message_bytes
from schemas.fragments import FRAGMENT, Fragments, fragment_stamps
from tests.fronts import Front

# The broker runs with the budget that bounds a message at 17 KiB (the default: 65 KiB). Payload
# sizes around that bound: the envelope adds ~40 bytes to a bin payload.
BUDGET = str(BOUNDED_BYTES)
MESSAGE_BYTES = message_bytes(BOUNDED_BYTES)
PART = MESSAGE_BYTES - FRAGMENT.size
WHOLE = MESSAGE_BYTES - STAMP.size - 200
JUST_OVER = MESSAGE_BYTES
LONG = 1_000_000


def published(bus) -> list[tuple[str, bytes, str | None]]:
    """Publish events of every kind of size, and a batch longer than a message; returns them in order."""
    events = [
        ("big:a", os.urandom(100), None),
        ("big:a", os.urandom(JUST_OVER), None),
        ("big:b", os.urandom(LONG), "s-big"),
        ("big:a", os.urandom(WHOLE), None),
    ]
    for event_type, payload, session_id in events:
        bus.publish(event_type, payload, session_id=session_id)
    batch = [("big:c", os.urandom(2000), "s-big") for _ in range(60)]  # 120 KB: one batch, 8 messages
    assert bus.publish_many(batch) == 60
    bus.publish("big:a", b"last")
    return events + batch + [("big:a", b"last", None)]


def raw_batch(home: Path, ctx: zmq.Context) -> list[tuple[str, bytes, str | None]]:
    """60 events of 2,000 bytes as one batch message (PROTOCOL.md §4.2): the broker splits it."""
    payloads = [os.urandom(2000) for _ in range(60)]
    bodies = [msgpack.packb([1, 1700000000.0, "raw", "s-big", p], use_bin_type=True) for p in payloads]
    pub = raw_publisher(ctx, Endpoints.for_home(home).publish)
    pub.send_multipart(encode_batch("big:d", bodies))
    pub.close(linger=5000)
    return [("big:d", p, "s-big") for p in payloads]


def test_events_longer_than_a_message_arrive_whole_and_in_order(home: Path, start, front: Front) -> None:
    start("broker", "--sub-bytes", BUDGET)
    start("event-log")
    ctx = zmq.Context()
    control = Endpoints.for_home(home).control
    try:
        with front.connect(home, name="big") as bus:
            with bus.subscribe("big:**") as sub, bus.subscribe("big:**", session_id="s-big") as session_sub:
                sent = published(bus) + raw_batch(home, ctx)
                got = [sub.recv(timeout=10) for _ in sent]
                in_session = [session_sub.recv(timeout=10) for _ in range(121)]
                assert sub.recv_many(timeout=0.05) == [] and sub.lost == 0
            for raw in (False, True):  # two publishers: each one's events in its order
                assert [(e.type, e.payload, e.session_id) for e in got if (e.type == "big:d") == raw] == [
                    event for event in sent if (event[0] == "big:d") == raw
                ]
            assert [e.version for e in got] == list(range(got[0].version, got[0].version + len(sent)))
            assert [e.seq for e in got if e.type == "big:a"] == [1, 2, 3, 4]
            assert [e.seq for e in got if e.type == "big:c"] == list(range(1, 61))
            assert [e.seq for e in got if e.type == "big:d"] == list(range(1, 61))
            assert [(e.version, e.payload) for e in in_session] == [
                (e.version, e.payload) for e in got if e.session_id == "s-big"
            ]
            # the event log got them whole too (from the same fragments), and gives them back
            wait_logged(bus, got[-1].version)
            replayed = list(bus.replay("big:**"))
            assert [(e.version, e.type, e.payload) for e in replayed] == [(e.version, e.type, e.payload) for e in got]
            with bus.subscribe("big:**", policy="recover", since=0, timeout=10) as recovering:
                again = [recovering.recv(timeout=10) for _ in sent]
            assert [(e.version, e.payload) for e in again] == [(e.version, e.payload) for e in got]
        counters = stats(ctx, control)
        # 2 fragments, 58, the SDK's batch (120 KB) in runs of up to 8, the raw batch; and again on
        # the session's stream, its events: the 58 fragments and both batches
        assert counters["fragmented"] == (2 + 58 + 8 + 8) + (58 + 8 + 8)
        assert counters["config"]["message_bytes"] == MESSAGE_BYTES
    finally:
        ctx.destroy(linger=0)


def test_a_subscriber_that_loses_fragments_counts_each_event_it_lost(start, home: Path) -> None:
    """A queue of 8 messages at the broker and 2 at the subscriber, a burst of 40 events of 6
    fragments each: whatever the queues dropped, every event arrives whole or is counted lost,
    the tail's included (within the lost-tail look's second)."""
    start("broker", "--sub-hwm", "8", "--sub-bytes", BUDGET)
    n, size = 40, 5 * PART + 100
    payloads = [os.urandom(size) for _ in range(n)]
    with sdk.connect(home, name="burst") as bus:
        with bus.subscribe("burst:*", policy="count", hwm=2) as sub:
            for payload in payloads:
                bus.publish("burst:one", payload)
            bus.flush(timeout=10)  # all stamped (and sent) before the subscriber reads anything
            got: list[sdk.Event] = []

            def read() -> int:
                got.extend(sub.recv_many(max=64, timeout=0.2))
                return len(got) + sub.lost

            wait_for(read, lambda total: total >= n, timeout=10, what="every event received or counted lost")
    assert sub.lost > 0, "nothing was dropped: the queues held the whole burst, so nothing was tested"
    assert len(got) + sub.lost == n
    assert all(e.payload == payloads[e.seq - 1] for e in got)


# A subscriber written from PROTOCOL.md §5 and §5.2 alone: it skips what is not an event, puts
# fragments together, and sees an event it could not put together as a gap in topic_seq.
RAW_SUBSCRIBER = r"""
def receive(sub, parts):
    topic, stamp, body = sub.recv_multipart()
    if topic[:1] == b"\x00":
        return None
    version = struct.unpack_from("!Q", stamp)[0]
    if version == 0:
        if len(stamp) != 32:
            return None
        _, version, topic_seq, index, count = struct.unpack("!QQQII", stamp)
        if index == 0:
            parts[:] = [(topic, version)]
        elif parts[:1] != [(topic, version)] or len(parts) != index + 1:
            parts[:] = []
            return None
        parts.append(body)
        if index + 1 < count:
            return None
        body = b"".join(parts[1:])
        parts[:] = []
        return topic, version, topic_seq, msgpack.unpackb(body, raw=False)
    version, topic_seq = struct.unpack_from("!QQ", stamp)
    return topic, version, topic_seq, msgpack.unpackb(body, raw=False)
"""


def test_a_subscriber_from_the_protocol_puts_fragments_together(home: Path, start) -> None:
    start("broker", "--sub-bytes", BUDGET)
    scope: dict = {"struct": struct, "msgpack": msgpack}
    exec(RAW_SUBSCRIBER, scope)
    receive = scope["receive"]
    ctx = zmq.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvtimeo = 5000
        sub.connect(f"ipc://{home}/sub.sock")
        sub.subscribe(b"raw:")
        token = b"\x00sync:" + uuid.uuid4().hex.encode()
        sub.subscribe(token)
        while sub.recv_multipart()[0] != token:
            pass
        long = os.urandom(3 * PART)
        with sdk.connect(home, name="big") as bus:
            bus.publish("raw:long", long)
            bus.publish("raw:long", b"short")
        got, parts = [], []
        while len(got) < 2:
            event = receive(sub, parts)
            if event is not None:
                got.append(event)
        assert [(t, seq, body[4]) for t, _v, seq, body in got] == [(b"raw:long", 1, long), (b"raw:long", 2, b"short")]
        assert stats(ctx, Endpoints.for_home(home).control)["fragmented"] == 4  # 3 parts and the envelope's rest
    finally:
        ctx.destroy(linger=0)


def test_fragments_are_put_together_only_complete_and_in_order() -> None:
    body = os.urandom(2 * PART + 10)
    stamps = fragment_stamps(7, 3, len(body), PART)
    parts = [body[i * PART : (i + 1) * PART] for i in range(3)]
    assert [struct.unpack("!QQQII", s) for s in stamps] == [(0, 7, 3, i, 3) for i in range(3)]
    assert all(len(s) == FRAGMENT.size for s in stamps)

    whole = Fragments()
    assert whole.take(b"t", stamps[0], parts[0]) is None
    assert whole.take(b"t", stamps[1], parts[1]) is None
    assert whole.take(b"t", stamps[2], parts[2]) == (b"t", STAMP.pack(7, 3), body)

    missing = Fragments()  # the middle one dropped: nothing comes out, not a body with a hole
    assert missing.take(b"t", stamps[0], parts[0]) is None
    assert missing.take(b"t", stamps[2], parts[2]) is None
    headless = Fragments()  # the first one dropped
    assert headless.take(b"t", stamps[1], parts[1]) is None
    assert headless.take(b"t", stamps[2], parts[2]) is None
    # an event given up does not spoil the next one
    nxt = fragment_stamps(8, 4, len(body), PART)
    assert [missing.take(b"t", s, p) for s, p in zip(nxt, parts)][-1] == (b"t", STAMP.pack(8, 4), body)
