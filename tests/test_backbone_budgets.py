"""Byte budgets at an edge (issue 15's budgets on a backbone, issue 19): as the broker, an edge
sends no message longer than its budget allows (runs split between events, long events as
fragments, schemas/fragments.py), caps each subscriber's and publisher's queue by bytes, and a
stalled subscriber costs it no more than its budget."""

from __future__ import annotations

from pathlib import Path

import zmq

import sdk
from broker.backbone.edge import EdgeConfig
from schemas.endpoints import Endpoints
from tests.helpers import start_part, stats, wait_stats
from tests.test_byte_budgets import memory

MiB = 1024 * 1024
EDGE_SLACK = 48 * MiB
"""What the bound allows an edge beyond its queues' budgets: the broker's SLACK (tests/
test_byte_budgets.py) and the NATS connection's own buffers, which hold the stream's deliveries
and the publishes in flight. A stalled subscriber at an edge without a budget took it from 48 to
117 MiB with 59 MiB of 256 KB events sent, and to 233 MiB with 176 MiB; with budgets of 4 MiB,
to 75, 77 and 89 MiB, whatever was sent."""


def edge(xprocess, home: Path, cluster, stream: str, *extra: str):
    return start_part(xprocess, home, "edge", "--backbone", cluster.servers, "--stream", stream, "--replicas", "1", *extra)


def test_an_edge_with_a_budget_bounds_its_messages_and_every_event_arrives_whole(
    xprocess, cluster, stream, homes
) -> None:
    home = homes()
    budget = MiB  # messages of at most 17 KiB of stamp and body
    part = edge(xprocess, home, cluster, stream, "--sub-bytes", str(budget))
    ctx = zmq.Context()
    try:
        control = Endpoints.for_home(home).control
        config = stats(ctx, control)["config"]
        expected = EdgeConfig(servers=[], stream=stream, endpoints=Endpoints.for_home(home), sub_bytes=budget,
                              max_event_size=config["max_event_size"])
        assert (config["message_bytes"], config["sub_queue"]) == (17 * 1024, expected.sub_queue())
        big = {"pad": "b" * 100_000}
        with sdk.connect(home, name="t", timeout=10.0) as bus, bus.subscribe("t:**") as sub:
            for i in range(3):
                bus.publish("t:big", {**big, "i": i})
            bus.publish_many([("t:small", {"pad": "s" * 1000, "i": i}) for i in range(100)])  # 100 KB together
            for i in range(10):
                bus.publish("t:tiny", i)
            got = [sub.recv(timeout=10) for _ in range(113)]
        assert [e.version for e in got] == list(range(got[0].version, got[0].version + 113))
        assert [(e.type, e.seq) for e in got] == (
            [("t:big", i + 1) for i in range(3)] + [("t:small", i + 1) for i in range(100)]
            + [("t:tiny", i + 1) for i in range(10)]
        )
        assert [e.payload for e in got[:3]] == [{**big, "i": i} for i in range(3)]
        assert [e.payload["i"] for e in got[3:103]] == list(range(100))
        assert [e.payload for e in got[103:]] == list(range(10))
        assert stats(ctx, control)["fragmented"] >= 3 * 6  # each big event in six fragments or more
    finally:
        part.stop()
        ctx.destroy(linger=0)


def test_a_stalled_subscriber_at_an_edge_holds_no_more_than_its_byte_budget(xprocess, cluster, stream, homes) -> None:
    home = homes()
    budget = 4 * MiB
    part = edge(xprocess, home, cluster, stream, "--sub-bytes", str(budget), "--in-bytes", str(budget))
    ctx = zmq.Context()
    control = Endpoints.for_home(home).control
    size, count = 256_000, 500
    try:
        with sdk.connect(home, name="t", timeout=10.0, publish_timeout=60.0) as bus:
            with bus.subscribe("warm:*") as warm:  # what the first big sends allocate stays, budget or not
                bus.publish("warm:up", {"pad": "w" * size})
                warm.recv(timeout=10)
            before = memory(part.pid, "VmRSS")
            first = stats(ctx, control)["version"]
            with bus.subscribe("load:*", hwm=1):  # never read
                for _ in range(count):
                    bus.publish("load:big", {"pad": "x" * size})
                bus.flush(60)
                wait_stats(ctx, control, lambda s: s["version"] >= first + count, what="every event delivered",
                           timeout=60)
                peak = memory(part.pid, "VmHWM")
    finally:
        part.stop()
        ctx.destroy(linger=0)
    sent = size * count
    bound = before + 2 * budget + EDGE_SLACK
    print(f"\nedge: {before / MiB:.0f} MiB warm, peak {peak / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB;"
          f" {sent / MiB:.0f} MiB sent to a stalled subscriber")
    assert sent > 2 * (bound - before), "the scenario must send more than twice what the bound allows"
    assert peak <= bound
