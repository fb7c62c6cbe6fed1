"""The backbone's stream as the bus's history (issue 19): the retention options of ``up --backbone``
become the stream's limits, and what they removed is gone from replay and ``since=`` as the
single-host log's retention has it (its ``stats`` say where the history starts)."""

from __future__ import annotations

import asyncio
from typing import Any

import sdk
from tests.helpers import wait_for
from tests.test_backbone_edge import edge, received


def stream_config(cluster, stream: str) -> Any:
    """The stream's configuration as JetStream has it."""

    async def ask() -> Any:
        import nats

        nc = await nats.connect(cluster.servers.split(","), connect_timeout=5)
        try:
            return (await nc.jetstream(timeout=10).stream_info(stream)).config
        finally:
            await nc.close()

    return asyncio.run(ask())


def publish(bus: sdk.Bus, first: int, last: int) -> None:
    """Events ``first..last`` (payload ``{"i": i}``), odd ones of ``r:odd``; once all are in the stream."""
    for i in range(first, last + 1):
        bus.publish("r:odd" if i % 2 else "r:even", {"i": i})
    wait_for(bus.stats, lambda s: s["version"] == last, timeout=10, what=f"{last} events in the stream")


def test_retention_options_are_the_streams_limits_and_what_they_remove_is_gone(xprocess, cluster, stream, homes) -> None:
    home = homes()
    up = edge(xprocess, home, cluster, stream, "--replicas", "1", "--retain-events", "10",
              "--retain-seconds", "3600", "--retain-bytes", "1000000", command="up")
    try:
        config = stream_config(cluster, stream)
        assert (config.max_msgs, config.max_age, config.max_bytes) == (10, 3600.0, 1_000_000)
        with sdk.connect(home, name="r", timeout=5.0) as bus:
            publish(bus, 1, 30)
            stats = bus.log_stats()
            assert (stats["first"], stats["last"], stats["events"], stats["trimmed"]) == (21, 30, 10, 20)
            assert stats["retention"] == {"events": 10, "seconds": 3600.0, "bytes": 1_000_000}
            assert [(e.version, e.seq, e.payload["i"]) for e in bus.replay()] == [
                (v, (v + 1) // 2, v) for v in range(21, 31)]
            # As with the single-host log's retention: a subscription from an older version gets
            # what is kept, and the log's stats say where that starts.
            with bus.subscribe("r:odd", since=4) as sub:
                assert [(v, s) for v, s, *_ in received(sub, 5)] == [(v, (v + 1) // 2) for v in range(21, 31, 2)]
                assert sub.lost == 0
    finally:
        up.stop()

    # A limit given again with another value changes the stream's; the ones not given stay.
    part = edge(xprocess, home, cluster, stream, "--retain-events", "4")
    try:
        config = stream_config(cluster, stream)
        assert (config.max_msgs, config.max_age, config.max_bytes) == (4, 3600.0, 1_000_000)
        with sdk.connect(home, name="r2", timeout=5.0) as bus:
            assert [e.version for e in bus.replay()] == [27, 28, 29, 30]
            publish(bus, 31, 32)
            assert [(e.version, e.seq) for e in bus.replay()] == [(29, 15), (30, 15), (31, 16), (32, 16)]
            assert bus.log_stats()["trimmed"] == 28
    finally:
        part.stop()
