"""The backbone's stream as the bus's history (issue 19): the retention options of ``up --backbone``
become the stream's limits, and what they removed is gone from replay and ``since=`` as the
single-host log's retention has it (its ``stats`` say where the history starts); a single-host
home moves onto a backbone with its versions continued (the stream's version base)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import sdk
from tests.helpers import REPO, start_part, wait_for
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


def edge_refused(cluster, stream: str, home: Path, *extra: str) -> str:
    """Run ``pryxbus edge`` expecting it to refuse to start: its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "broker", "edge", "--backbone", cluster.servers, "--stream", stream,
         "--home", str(home), *extra], cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1 and "ready" not in done.stdout, (done.stdout, done.stderr)
    return done.stderr


def test_a_single_host_home_moves_onto_a_backbone_with_its_versions_continued(xprocess, cluster, stream, homes) -> None:
    a, b = homes(), homes()
    broker = start_part(xprocess, a, "broker")  # home a was a single-host bus, up to version 5
    with sdk.connect(a, name="old", timeout=5.0) as bus:
        assert [bus.publish("m:old", {"i": i}, wait=True) for i in range(5)] == [1, 2, 3, 4, 5]
    broker.stop()

    up = edge(xprocess, a, cluster, stream, "--replicas", "1", command="up")  # the base: the home's 5
    other = edge(xprocess, b, cluster, stream)  # a fresh home takes the stream's base
    try:
        assert stream_config(cluster, stream).first_seq == 6
        with sdk.connect(a, name="pa", timeout=5.0) as bus_a, sdk.connect(b, name="pb", timeout=5.0) as bus_b:
            for bus in (bus_a, bus_b):
                ping = bus.control.call({"op": "ping"})
                assert (ping["version"], ping["first_version"]) == (5, 6)
                assert bus.stats()["backbone"]["version_base"] == 5
            with bus_a.subscribe() as sub_a, bus_b.subscribe() as sub_b:
                confirmed = [bus_a.publish("m:new", {"i": 0}, wait=True), bus_b.publish("m:new", {"i": 1}, wait=True)]
                bus_a.publish("m:other", {"i": 2})
                seen_a, seen_b = received(sub_a, 3), received(sub_b, 3)
            assert confirmed == [6, 7]
            assert seen_a == seen_b == [(6, 1, "m:new", {"i": 0}), (7, 2, "m:new", {"i": 1}), (8, 1, "m:other", {"i": 2})]
            for bus in (bus_a, bus_b):
                assert [(e.version, e.seq) for e in bus.replay()] == [(6, 1), (7, 2), (8, 1)]
                assert [(e.version, e.seq) for e in bus.replay(since=6, until=7)] == [(7, 2)]
                with bus.subscribe("m:*", since=6) as late:
                    assert [v for v, *_ in received(late, 2)] == [7, 8]
                tail = bus.log.call({"op": "tail", "limit": 2})
                assert ([row[0] for row in tail["events"]], tail["last"]) == ([7, 8], 8)
                assert (bus.log_stats()["first"], bus.stats()["version"]) == (6, 8)

        # Another base for the same stream is refused, given or from a home's single-host past.
        said = edge_refused(cluster, stream, homes(), "--version-base", "7")
        assert f"the stream {stream} numbers versions from 6 (version base 5), not from --version-base 7" in said
        high = homes()
        (high / "broker.version").write_text("900\n")  # a single-host bus that reserved up to 900
        said = edge_refused(cluster, stream, high)
        assert "this home's single-host bus reached version 900" in said and "numbers versions from 6" in said
    finally:
        up.stop()
        other.stop()
