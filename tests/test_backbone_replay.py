"""Replay, ``since=`` and ``recover`` from an edge (issue 19): events come from the stream with the
sequences the edge counted (or counts again from a checkpoint), in pages that keep their consumer
from one to the next (broker/backbone/replay.py), and leave nothing behind."""

from __future__ import annotations

import asyncio
import itertools
import threading

import zmq

import sdk
from schemas.endpoints import Endpoints
from tests.helpers import stats, wait_for
from tests.test_backbone_edge import _cancel_the_rest, edge, received


def test_since_replay_and_recover_come_from_the_stream(xprocess, cluster, stream, homes) -> None:
    home = homes()
    part = edge(xprocess, home, cluster, stream, "--sub-hwm", "20", "--checkpoint-every", "100", "--replicas", "1")
    n = 2000
    try:
        with sdk.connect(home, name="t", timeout=5.0) as bus:
            with bus.subscribe("trace:*", policy="recover", hwm=10) as slow:
                for i in range(n):
                    bus.publish("trace:event" if i % 4 else "other:event", {"i": i})
                wait_for(bus.stats, lambda s: s["version"] == n, timeout=30, what="every event in the stream")
                got = [slow.recv(timeout=10) for _ in range(n - n // 4)]
                assert slow.recovered > 0  # the queues overflowed: recovered from the stream
                assert slow.lost == 0
            expected = [(i + 1, i) for i in range(n) if i % 4]
            assert [(e.version, e.payload["i"]) for e in got] == expected
            assert [e.seq for e in got] == list(range(1, len(expected) + 1))

            with bus.subscribe("other:*", since=n - 40) as late:
                caught = received(late, 10)
            assert caught == [(v, v // 4 + 1, "other:event", {"i": v - 1}) for v in range(n - 39, n + 1) if v % 4 == 1]

            replayed = list(bus.replay("other:event", since=0, until=400))  # counted again from checkpoints
            assert [(e.version, e.seq) for e in replayed] == [(v, v // 4 + 1) for v in range(1, 401) if v % 4 == 1]
    finally:
        part.stop()


def test_a_replay_in_pages_reads_each_event_from_the_stream_once(xprocess, cluster, stream, homes) -> None:
    """The consumer a replay page read from stays open for the next page (broker/backbone/replay.py
    Readers): 12,000 events in the SDK's pages of 5,000 come out once each, in order, with their
    sequences, and the edge reads each from NATS once per replay (with a consumer per page it read
    84,000 to 110,000 messages for 40,000 events: the server pushes past a page what is then read
    for nothing). Two replays at once, one filtered, keep their own consumers."""
    home = homes()
    part = edge(xprocess, home, cluster, stream, "--replicas", "1", "--checkpoint-every", "1000")
    n = 12_000
    ctx = zmq.Context()
    try:
        with sdk.connect(home, name="t", timeout=10.0, publish_timeout=60.0) as bus:
            for first in range(0, n, 1000):
                bus.publish_many([("page:a" if i % 3 else "page:b", {"i": i}) for i in range(first, first + 1000)])
            bus.flush(60)
            control = Endpoints.for_home(home).control
            wait_for(lambda: stats(ctx, control), lambda s: s["version"] == n, timeout=30, what="every event in")
            before = stats(ctx, control)["backbone"]["connection"]["in_msgs"]
            everything, only_b = bus.replay(since=0, until=n), bus.replay("page:b", since=0, until=n)
            got, got_b = [], []
            for a, b in itertools.zip_longest(everything, only_b):  # both replays open at once
                if a is not None:
                    got.append(a)
                if b is not None:
                    got_b.append(b)
            read = stats(ctx, control)["backbone"]["connection"]["in_msgs"] - before
    finally:
        part.stop()
        ctx.destroy(linger=0)
    assert [(e.version, e.payload["i"]) for e in got] == [(v, v - 1) for v in range(1, n + 1)]
    for topic in ("page:a", "page:b"):
        assert [e.seq for e in got if e.type == topic] == list(range(1, sum(e.type == topic for e in got) + 1))
    assert [(e.version, e.seq) for e in got_b] == [(v, v // 3 + 1) for v in range(1, n + 1) if (v - 1) % 3 == 0]
    print(f"\nreplays of {n} and of {len(got_b)} of them: the edge read {read} messages from NATS")
    assert read < 2 * n * 1.1  # each event once per replay, and the consumers' control messages


def test_a_replay_leaves_no_route_behind_on_the_edges_wire(cluster, stream, homes) -> None:
    """A replay page's consumer is routed on the edge's wire (broker/backbone/wire.py) by its
    nats-py Subscription; once the replay is done, or a tail read, the route must be gone: a route
    left behind holds its reader (and every event it received) for the edge's life. The edge runs
    in this process, so that the test can look at its wire."""
    from broker.backbone.edge import Edge, EdgeConfig
    from tests.fronts import LoopThread

    home = homes()
    edge = Edge(EdgeConfig(servers=cluster.urls, stream=stream, replicas=1, endpoints=Endpoints.ipc(home)))
    loop = LoopThread()
    ready = threading.Event()
    running = asyncio.run_coroutine_threadsafe(edge.run(lambda _: ready.set()), loop.loop)
    n = 300
    try:
        assert ready.wait(30), "the edge did not start"
        with sdk.connect(home, name="t", timeout=10.0) as bus:
            bus.publish_many([("route:a" if i % 2 else "route:b", {"i": i}) for i in range(n)])
            bus.flush(30)
            wait_for(lambda: loop.run(lambda: edge.version), lambda v: v == n, timeout=30, what="every event in")
            routed = loop.run(lambda: len(edge.wire.routes))  # the edge's feed (and its publisher's acks)
            replayed = list(bus.replay(since=0, until=n))
            assert [e.version for e in replayed] == list(range(1, n + 1))
            assert [e.version for e in bus.log_tail("route:b", limit=3)] == [n - 5, n - 3, n - 1]
            wait_for(lambda: loop.run(lambda: len(edge.readers.open)), lambda k: k == 0, timeout=10,
                     what="no consumer kept once the replay reached its end")
            assert loop.run(lambda: len(edge.wire.routes)) == routed
    finally:
        loop.loop.call_soon_threadsafe(edge.stop)
        running.result(10)
        loop.run(_cancel_the_rest)
        loop.close()
