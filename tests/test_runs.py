"""Runs (PROTOCOL.md §5): events of one type that reach the broker together leave it as one message.

A burst is made certain by stopping the broker (SIGSTOP) while a publisher queues events, then
letting it go: it finds them all waiting. Every consumer must then see every version exactly once,
in order: a raw subscriber decoding runs by hand, the SDK, and the event log.
"""

from __future__ import annotations

import signal
import struct
from pathlib import Path

import msgpack
import pytest
import zmq

import sdk
from schemas.envelope import MAX_RUN
from tests.helpers import Part
from helpers import wait_for
from test_raw_interop import raw_subscriber

BURST = [("tick:a", 300), ("tick:b", 1), ("tick:a", 5), ("tick:c", 200), ("tick:a", 94)]
TOTAL = sum(n for _, n in BURST)


def publish_while_stopped(broker: Part, bus: sdk.Bus) -> list[tuple[str, int]]:
    """Queue the burst at a stopped broker; returns (type, n) in publish order.

    One event goes first, while the broker runs, so that the publisher is connected (version 1).
    """
    bus.publish("warm:up", None)
    sent = []
    broker.signal(signal.SIGSTOP)
    try:
        for event_type, count in BURST:
            for _ in range(count):
                n = len(sent)
                bus.publish(event_type, {"n": n})
                sent.append((event_type, n))
    finally:
        broker.signal(signal.SIGCONT)
    return sent


def raw_receive_all(sub: zmq.Socket, total: int) -> tuple[list[tuple[str, int, int, dict]], list[int]]:
    """Every event, decoded as PROTOCOL.md §5 says: one event, or a run; plus each message's size."""
    events: list[tuple[str, int, int, dict]] = []
    sizes = []
    while len(events) < total:
        assert sub.poll(5000), f"no message within 5s after {len(events)} events"
        topic, stamp, body = sub.recv_multipart()
        version, topic_seq = struct.unpack_from("!QQ", stamp)
        lengths = struct.unpack(f"!{(len(stamp) - 16) // 4}I", stamp[16:]) or (len(body),)
        assert sum(lengths) == len(body)
        start = 0
        for i, length in enumerate(lengths):
            env = msgpack.unpackb(body[start : start + length], raw=False)
            events.append((topic.decode(), version + i, topic_seq + i, env[4]))
            start += length
        sizes.append(len(lengths))
    return events, sizes


def expected(sent: list[tuple[str, int]]) -> list[tuple[str, int, int, dict]]:
    seqs: dict[str, int] = {}
    out = []
    for version, (event_type, n) in enumerate(sent, start=2):  # 1 is warm:up
        seqs[event_type] = seqs.get(event_type, 0) + 1
        out.append((event_type, version, seqs[event_type], {"n": n}))
    return out


def test_a_burst_comes_out_in_runs_and_every_consumer_sees_each_version_once(
    home: Path, broker: Part, event_log: Part, bus: sdk.Bus
) -> None:
    ctx = zmq.Context()
    try:
        raw = raw_subscriber(ctx, home, [b"tick:"])
        with bus.subscribe("tick:a", "tick:c", policy="count") as sub:
            sent = publish_while_stopped(broker, bus)
            want = expected(sent)
            got, sizes = raw_receive_all(raw, TOTAL)
            assert got == want
            assert max(sizes) > 1, "the broker found the whole burst waiting, yet sent no run"
            assert max(sizes) <= MAX_RUN
            mine = [sub.recv(timeout=5) for _ in range(TOTAL - 1)]  # all but the one tick:b
            assert [(e.type, e.version, e.seq, e.payload) for e in mine] == [w for w in want if w[0] != "tick:b"]
            assert (sub.lost, sub.malformed) == (0, 0)
        logged = wait_for(lambda: list(bus.replay("tick:**")), lambda r: len(r) >= TOTAL, what="the log")
        assert [(e.type, e.version, e.seq, e.payload) for e in logged] == want
    finally:
        ctx.destroy(linger=0)


def test_max_run_1_sends_every_event_alone(home: Path, start) -> None:
    broker = start("broker", "--max-run", "1", "--sub-bytes", "0")  # every event alone: more than 7 messages
    ctx = zmq.Context()
    try:
        raw = raw_subscriber(ctx, home, [b"tick:"])
        with sdk.connect(home, name="test", timeout=5.0) as bus:
            sent = publish_while_stopped(broker, bus)
        got, sizes = raw_receive_all(raw, TOTAL)
        assert got == expected(sent)
        assert set(sizes) == {1}
    finally:
        ctx.destroy(linger=0)


def good(n: int) -> bytes:
    return msgpack.packb([1, float(n), "p", None, {"n": n}], use_bin_type=True)


@pytest.mark.parametrize(
    "bad",
    [
        b"\x95\x01",  # truncated: would swallow the next body as its elements
        good(99) + b"\xc0",  # a whole envelope with a byte more: would shift the rest
        b"\x95\x01\x02\x03\x04\x05",  # five fields, ts/source/... of the wrong kind
        msgpack.packb([2, 0.0, "p", None, None]),  # another envelope version
        b"\x95\xc1",  # 0xc1 is never valid msgpack
    ],
    ids=["truncated", "trailing-byte", "wrong-fields", "envelope-2", "invalid-byte"],
)
def test_a_bad_body_in_a_run_costs_only_itself(bad: bytes) -> None:
    """Each body must end exactly at its length: a bad one is counted alone, never shifts the rest."""
    from schemas.envelope import run_stamp
    from sdk.subscription import EventDecoder

    bodies = [good(0), bad, good(2), good(3)]
    decoder = EventDecoder(("t:x",), "count")
    events: list[sdk.Event] = []
    decoder.feed(b"t:x", run_stamp(5, 1, [len(b) for b in bodies]), b"".join(bodies), events.append)
    ok = [(e.version, e.seq, e.payload) for e in events]
    if bad == b"\x95\x01\x02\x03\x04\x05":  # a well-formed envelope: its fields are the publisher's
        assert ok == [(5, 1, {"n": 0}), (6, 2, 5), (7, 3, {"n": 2}), (8, 4, {"n": 3})]
        assert decoder.malformed == 0
    else:
        assert ok == [(5, 1, {"n": 0}), (7, 3, {"n": 2}), (8, 4, {"n": 3})]
        assert decoder.malformed == 1
    assert decoder.lost == 0
