"""Backpressure: slow subscribers lose events (exactly counted) without slowing anyone; publishers block.

The broker runs with a small ``--sub-hwm`` and subscribers with a small ``hwm``, so a subscriber
that never reads falls behind after a few hundred 2 kB events (the kernel's socket buffers hold the rest).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import pytest
import zmq

import sdk
import sdk.aio
from schemas.endpoints import Endpoints
from schemas.envelope import STAMP, encode_body
from sdk.transport import HEARTBEAT_TIMEOUT
from tests.fronts import Front

HWM = 10  # each subscriber's own queue
BROKER_HWM = 100  # per subscriber at the broker: small, with room for the fast one's in-flight batch
N = 1000
PAYLOAD = "x" * 2000  # big events fill the kernel's socket buffers after a few hundred
BATCH = 5  # the fast subscriber confirms every BATCH events: it never falls behind
# (with --sub-hwm 10 a fast subscriber in lock-step still lost an event now and then: the broker
# learns late how far a connection has read, so a queue of 10 leaves no margin for batches of 5.)


@pytest.fixture
def small_bus(start, home: Path, front: Front):
    """A bus of each front on a broker with a small ``--sub-hwm``."""
    start("broker", "--sub-hwm", str(BROKER_HWM))
    with front.connect(home, name="bp", timeout=5.0) as bus:
        yield bus


def publish_past_a_stuck_subscriber(bus: sdk.Bus, fast: sdk.Subscription) -> None:
    """Publish N events; the fast subscriber receives every one, in order, while the slow one sleeps."""
    for start in range(0, N, BATCH):
        for i in range(start, start + BATCH):
            bus.publish("load:x", {"i": i, "pad": PAYLOAD})
        got = [fast.recv(timeout=5) for _ in range(BATCH)]
        assert [(e.seq, e.payload["i"]) for e in got] == [(i + 1, i) for i in range(start, start + BATCH)]


def drain_until_marker(bus: sdk.Bus, slow: sdk.Subscription) -> tuple[list[sdk.Event], int]:
    """Read the slow subscriber's backlog, then publish markers until one gets through.

    Returns what it received and how many events were published in all. Each marker carries the
    number of events published up to and including itself, which must equal its topic sequence.
    """
    received: list[sdk.Event] = []
    published = N
    while True:
        try:
            event = slow.recv(timeout=0.2)
        except sdk.BusTimeout:
            published += 1  # its backlog is read (or still in flight): send a marker
            bus.publish("load:x", {"marker": published})
            continue
        received.append(event)
        if "marker" in event.payload:
            return received, published


def test_slow_subscriber_with_policy_count_keeps_going_and_counts(small_bus: sdk.Bus) -> None:
    with small_bus.subscribe("load:x", hwm=HWM, policy="count") as slow, small_bus.subscribe("load:x", hwm=HWM) as fast:
        publish_past_a_stuck_subscriber(small_bus, fast)
        received, _ = drain_until_marker(small_bus, slow)
    last = received[-1]
    assert last.payload["marker"] == last.seq, "the marker's sequence is the number published before it"
    assert len(received) + slow.lost == last.seq
    assert slow.lost > 0, "the slow subscriber lost nothing: the test did not overflow its queues"
    seqs = [e.seq for e in received]
    assert seqs == sorted(set(seqs))
    assert [e.version for e in received] == seqs  # one topic on this bus: version == seq


def test_slow_subscriber_with_policy_drop_ends_with_the_lost_count(small_bus: sdk.Bus) -> None:
    slow = small_bus.subscribe("load:x", hwm=HWM)
    with small_bus.subscribe("load:x", hwm=HWM) as fast:
        publish_past_a_stuck_subscriber(small_bus, fast)
    received: list[sdk.Event] = []
    with pytest.raises(sdk.SlowSubscriberError) as info:
        while True:  # the backlog, then the first event after the gap raises
            try:
                received.append(slow.recv(timeout=0.2))
            except sdk.BusTimeout:
                small_bus.publish("load:x", {"marker": True})
    k, lost = len(received), info.value.lost
    assert [e.seq for e in received] == list(range(1, k + 1))
    assert (info.value.topic, slow.lost) == ("load:x", lost)
    assert 1 <= lost and k + lost <= N  # the gap lies inside the burst; test_gap_counts_are_exact pins the value
    with pytest.raises(sdk.SlowSubscriberError):
        slow.recv(timeout=0.1)  # the subscription is over
    slow.close()
    slow.close()


class FakeBroker:
    """A bare XPUB standing in for the broker's out socket, to deliver chosen stamps exactly."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.linger = 0
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.xpub.bind(endpoint)
        self.thread = threading.Thread(target=self._answer_one_sync, daemon=True)
        self.thread.start()

    def _answer_one_sync(self) -> None:
        while self.xpub.poll(5000):
            msg = self.xpub.recv()
            if msg.startswith(b"\x01\x00sync:"):
                self.xpub.send_multipart([msg[1:], STAMP.pack(0, 0), b""])
                return

    def deliver(self, topic: bytes, seqs: list[int]) -> None:
        body = encode_body(None, source="fake", session_id=None, ts=1.0)
        for seq in seqs:
            self.xpub.send_multipart([topic, STAMP.pack(seq, seq), body])

    def close(self) -> None:
        self.thread.join(5)
        self.ctx.destroy(linger=0)


@pytest.mark.parametrize(
    ("policy", "seqs", "received", "lost"),
    [
        ("drop", [1, 2, 3, 7, 8], [1, 2, 3], 3),
        ("count", [1, 2, 3, 7, 8, 10, 20], [1, 2, 3, 7, 8, 10, 20], 3 + 1 + 9),
        ("count", [5, 6, 1, 2, 4], [5, 6, 1, 2, 4], 1),  # a lower seq is a broker restart, not a loss
    ],
)
def test_gap_counts_are_exact(home: Path, front: Front, policy: str, seqs: list[int], received: list[int], lost: int) -> None:
    endpoints = Endpoints.ipc(home)
    fake = FakeBroker(endpoints.subscribe)
    try:
        # No control endpoint answers here: the subscription's questions to the broker (which run
        # is this?) go unanswered, so a short timeout keeps them from costing seconds each; the
        # fake broker's answer to the handshake gets the usual time.
        with front.connect(endpoints, max_event_size=1000, timeout=0.2) as bus:
            sub = bus.subscribe("gap:x", policy=policy, timeout=5.0)  # type: ignore[arg-type]
            fake.deliver(b"gap:x", seqs)
            got = []
            try:
                for _ in seqs:
                    got.append(sub.recv(timeout=5).seq)
            except sdk.SlowSubscriberError as e:
                assert (policy, e.lost) == ("drop", lost)
            assert (got, sub.lost) == (received, lost)
    finally:
        fake.close()


def test_publisher_blocks_then_times_out_when_the_broker_is_stopped(start, home: Path, front: Front) -> None:
    broker = start("broker", "--in-hwm", str(HWM))
    with front.connect(home, name="blocked", hwm=HWM, publish_timeout=0.3) as bus, bus.subscribe("stall:x") as sub:
        bus.publish("stall:x", {"i": 0})
        assert sub.recv(timeout=5).payload == {"i": 0}
        broker.signal(signal.SIGSTOP)
        accepted = 1
        try:
            with pytest.raises(sdk.PublishTimeout):
                for i in range(1, 100_000):  # bounded: kernel buffers + two HWMs hold a few hundred
                    bus.publish("stall:x", {"i": i, "pad": PAYLOAD})
                    accepted += 1
        finally:
            broker.signal(signal.SIGCONT)
        bus.publish("stall:x", {"i": accepted})  # the refused event again: it now goes through
        got = [sub.recv(timeout=5) for _ in range(accepted)]
    assert [e.payload["i"] for e in got] == list(range(1, accepted + 1))
    assert [e.seq for e in got] == list(range(2, accepted + 2))
    assert sub.lost == 0


def test_an_asyncio_publisher_waits_for_room_in_a_full_queue(start, home: Path) -> None:
    """``sdk.aio`` with a queue of HWM events and a burst: a publish that finds the queue full
    waits for room (at most ``publish_timeout``), as the sync one blocks. Before, zmq.asyncio's
    wait for room ended at once (an XPUB always reports room), so the first full queue raised
    PublishTimeout without waiting."""
    start("broker", "--sub-bytes", "0")  # the broker's queue of 10000 takes the burst for the reader
    burst = 5000

    async def main() -> tuple[list[object], int]:
        async with sdk.aio.connect(home, name="burst", hwm=HWM, publish_timeout=30) as bus:
            async with bus.subscribe("burst:x", policy="count") as sub:
                for i in range(burst):
                    await bus.publish("burst:x", i)
                got = [(await sub.recv(timeout=5)).payload for _ in range(burst)]
                return got, sub.lost

    assert asyncio.run(asyncio.wait_for(main(), 60)) == (list(range(burst)), 0)


STALLED_SUBSCRIBER = """
import sys, sdk
home = sys.argv[1]
with sdk.connect(home, name="stalled") as bus, bus.subscribe("load:*", "end:*", policy="count", hwm=10) as sub:
    print("subscribed", flush=True)
    sys.stdin.readline()  # stalled, its queue full, until the test says "read"
    got = 0
    while sub.recv(timeout=10).type != "end:marker":
        got += 1
    print(got, sub.lost, flush=True)
"""


def test_a_subscriber_that_stops_reading_for_longer_than_a_heartbeat_survives(start, home: Path) -> None:
    """libzmq 4.3 cannot heartbeat a connection whose reader is behind: the engine stops reading a
    connection whose queue is full, times out the heartbeat it cannot see, reconnects, and aborts
    the process once the reader catches up (``Assertion failed: _input_stopped``, libzmq#3937).
    Event connections therefore carry TCP keepalive instead (sdk/transport.py). Before, this
    subscriber process died with SIGABRT at its first receive after the stall."""
    from tests.helpers import finish, python_process, wait_for

    start("broker", "--sub-bytes", "0")  # the broker's queue of 10000 keeps the marker behind the flood
    child = python_process(STALLED_SUBSCRIBER, str(home), stdin=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "subscribed"
        with sdk.connect(home, name="flood") as bus:
            for i in range(20_000):
                bus.publish("load:event", {"i": i})
            wait_for(bus.stats, lambda s: s["version"] == 20_000, what="the flood stamped")
            threading.Event().wait(HEARTBEAT_TIMEOUT + 2)  # sync-ok: the stall must outlast a heartbeat timeout
            bus.publish("end:marker", {})
            child.stdin.write("read\n")
            child.stdin.flush()
            got, lost = map(int, finish(child, timeout=60).split())
    finally:
        if child.poll() is None:
            child.kill()
    assert got + lost == 20_000 and got > 0


def test_publishers_keep_heartbeats_and_event_receivers_use_keepalive(home: Path, broker) -> None:
    """The split sdk/transport.py explains: a receiver with a full queue must not heartbeat (libzmq
    aborts it), and a publisher must (keepalive never probes a connection with data to send: across
    a cut network a publisher lost 155 s of events without a word)."""
    with sdk.connect(home, name="split") as bus, bus.subscribe("split:*") as sub:
        bus.publish("split:x", {})
        assert sub.recv(timeout=5).type == "split:x"
        publisher, receiver = bus._pub, sub._sock
        assert publisher is not None
        assert publisher.getsockopt(zmq.HEARTBEAT_IVL) > 0 and publisher.getsockopt(zmq.HEARTBEAT_TIMEOUT) > 0
        assert receiver.getsockopt(zmq.HEARTBEAT_IVL) == 0 and receiver.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 0
        assert receiver.getsockopt(zmq.TCP_KEEPALIVE) == 1
