"""Oversized events: the SDK refuses them before sending; a raw oversized frame costs only its sender."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import sdk
from helpers import raw_publisher, stats, wait_for
from tests.fronts import Front

LIMIT = 1000


@pytest.fixture
def small_bus(start, home: Path):
    start("broker", "--max-event-size", str(LIMIT))
    with sdk.connect(home, name="big", timeout=5.0) as bus:
        yield bus


def body_size(payload: object) -> int:
    """The size of the SDK's identified body for ``payload``: the anonymous body's, plus the
    publisher id and number as two uint64s (9 bytes each, PROTOCOL.md §4.1)."""
    return len(msgpack.packb([1, 0.0, "big", None, payload], use_bin_type=True)) + 18


@pytest.fixture
def small_front_bus(start, home: Path, front: Front):
    """``small_bus`` on each front (sync, asyncio behind a blocking facade)."""
    start("broker", "--max-event-size", str(LIMIT))
    with front.connect(home, name="big", timeout=5.0) as bus:
        yield bus


def test_publish_over_the_limit_raises_and_sends_nothing(small_front_bus: sdk.Bus) -> None:
    small_bus = small_front_bus
    assert small_bus.max_event_size == LIMIT  # learnt from the broker's ping
    too_big = {"text": "x" * 2000}
    with small_bus.subscribe() as sub:
        with pytest.raises(sdk.MessageTooLarge) as info:
            small_bus.publish("big:event", too_big)
        assert (info.value.size, info.value.limit) == (body_size(too_big), LIMIT)
        assert isinstance(info.value, sdk.InvalidEvent) and isinstance(info.value, ValueError)
        pad = LIMIT - body_size({"text": ""})  # a body of exactly the limit is accepted
        exactly = {"text": "y" * (pad - 2)}  # str header grows from 1 to 3 bytes past 31 chars
        assert body_size(exactly) == LIMIT
        small_bus.publish("big:event", exactly)
        small_bus.publish("small:event", {"text": "fine"})
        got = [sub.recv(timeout=5) for _ in range(2)]
    assert [(e.type, e.version) for e in got] == [("big:event", 1), ("small:event", 2)]
    assert got[0].payload == exactly
    assert small_bus.stats()["events_in"] == 2


def test_a_raw_oversized_frame_disconnects_only_its_sender(home: Path, small_bus: sdk.Bus) -> None:
    ctx = zmq.Context()
    endpoints = small_bus.endpoints
    try:
        raw = raw_publisher(ctx, endpoints.publish)
        monitor = raw.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        with small_bus.subscribe() as sub:
            small_bus.publish("before", None)
            raw.send(b"huge:frame", zmq.SNDMORE)
            raw.send(b"\x95" + b"z" * (LIMIT * 4))  # over the broker's MAXMSGSIZE
            assert monitor.poll(5000), "the broker did not disconnect the oversized sender"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
            for i in range(20):
                small_bus.publish("after", i)
            got = [sub.recv(timeout=5) for _ in range(21)]
        assert [(e.type, e.version) for e in got] == [("before", 1)] + [("after", v) for v in range(2, 22)]
        s = stats(ctx, endpoints.control)
        assert (s["events_in"], s["malformed"], s["rejected"]) == (21, 0, 0)
        raw.disable_monitor()
    finally:
        ctx.destroy(linger=0)


def test_a_publisher_learns_the_smaller_limit_of_a_restarted_broker(start, home: Path, front: Front) -> None:
    """A broker restarted with a smaller --max-event-size: the connected publisher asks it again.

    Before, the SDK (both fronts) kept the limit it learnt at connect: it sent an event over the
    new limit, the new broker's MAXMSGSIZE dropped the connection, and that event and what was
    queued behind it were lost without an error.
    """
    first = start("broker")
    with front.connect(home, name="big", timeout=5.0) as bus:
        bus.publish("warm:up", None)
        bus.flush()  # confirmed by the first broker: not sent again to the second
        assert bus.max_event_size == 1048576
        first.stop()
        start("broker", "--max-event-size", str(LIMIT))
        with bus.subscribe() as sub:
            sent = 0

            def publish_small() -> int:
                nonlocal sent
                sent += 1
                bus.publish("small:event", sent)
                return bus.max_event_size

            wait_for(publish_small, lambda limit: limit == LIMIT, what="the publisher to learn the new limit")
            too_big = {"text": "x" * 2000}
            with pytest.raises(sdk.MessageTooLarge) as info:
                bus.publish("big:event", too_big)
            assert (info.value.size, info.value.limit) == (body_size(too_big), LIMIT)
            bus.publish("after", None)
            got = [sub.recv(timeout=5) for _ in range(sent + 1)]
    assert [(e.type, e.payload) for e in got] == [("small:event", i) for i in range(1, sent + 1)] + [("after", None)]
    assert [e.version for e in got] == list(range(got[0].version, got[0].version + sent + 1))
