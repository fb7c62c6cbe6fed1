"""``policy="recover"`` (issue 4): a subscriber that falls behind gets what it lost from the event log
(on both fronts, tests/fronts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdk
from tests.fronts import Front
from tests.helpers import wait_for

N = 20_000


def stalled_then_drained(bus: sdk.Bus, sub: sdk.Subscription, publish) -> list[sdk.Event]:
    """Publish while ``sub`` reads nothing (its queues overflow), then read everything."""
    for i in range(N):
        publish(i)
    last = N
    wait_for(bus.stats, lambda s: s["version"] == last, what="the broker stamping every event")
    wait_for(bus.log_stats, lambda s: s["last"] == last, what="the log holding every event")
    got = []
    while not got or got[-1].version < last:
        got.append(sub.recv(timeout=10))
    with pytest.raises(sdk.BusTimeout):
        sub.recv(timeout=0.1)
    return got


def test_a_stalled_subscriber_gets_every_version_exactly_once(start, front: Front) -> None:
    start("broker", "--sub-hwm", "50")
    log = start("event-log")
    with front.connect(log.home, name="test") as bus:
        with bus.subscribe(policy="recover", hwm=10) as sub:
            got = stalled_then_drained(bus, sub, lambda i: bus.publish("trace:event", {"i": i}))
            assert sub.recovered > 0  # the queues really overflowed
            assert sub.lost == 0
    assert [e.version for e in got] == list(range(1, N + 1))
    assert [e.payload["i"] for e in got] == list(range(N))
    assert [e.seq for e in got] == list(range(1, N + 1))


def test_recover_keeps_to_the_patterns(start, front: Front) -> None:
    start("broker", "--sub-hwm", "50")
    log = start("event-log")
    types = ["agent:spawned", "agent:completed", "channel:message"]  # the last event (N - 1) matches
    with front.connect(log.home, name="test") as bus:
        with bus.subscribe("agent:*", policy="recover", hwm=10) as sub:
            got = stalled_then_drained(bus, sub, lambda i: bus.publish(types[i % 3], i))
            assert sub.recovered > 0
    expected = [i for i in range(N) if i % 3 != 2]
    assert [e.payload for e in got] == expected
    assert [e.version for e in got] == [i + 1 for i in expected]
    assert [e.type for e in got] == [types[i % 3] for i in expected]


def test_recover_without_a_log_ends_like_drop(home: Path, start, front: Front) -> None:
    # Every event alone (no runs of up to 128): the queues then hold far fewer than N events, so the
    # burst overflows them whatever the timing (with runs they can hold most of it).
    start("broker", "--sub-hwm", "50", "--max-run", "1")
    with front.connect(home, name="test", timeout=0.3) as bus:
        with bus.subscribe(policy="recover", hwm=10) as sub:
            for i in range(N):
                bus.publish("trace:event", i)
            with pytest.raises(sdk.SlowSubscriberError) as caught:
                for _ in range(N + 100):
                    try:
                        sub.recv(timeout=0.5)
                    except sdk.BusTimeout:
                        # Drained, and the loss came at the very end of the burst: only a later
                        # event shows the gap.
                        bus.publish("trace:event", "after")
            assert caught.value.lost > 0
            with pytest.raises(sdk.SlowSubscriberError):
                sub.recv(timeout=0.1)


def test_since_and_recover_together(home: Path, start, front: Front) -> None:
    start("broker", "--sub-hwm", "50")
    start("event-log")
    with front.connect(home, name="test") as bus:
        for i in range(100):
            bus.publish("trace:event", i)
        wait_for(bus.log_stats, lambda s: s["last"] == 100, what="100 logged")
        with bus.subscribe(policy="recover", hwm=10, since=90) as sub:
            for i in range(100, 100 + N):
                bus.publish("trace:event", i)
            wait_for(bus.log_stats, lambda s: s["last"] == 100 + N, what="everything logged")
            got = [sub.recv(timeout=10) for _ in range(10 + N)]
            with pytest.raises(sdk.BusTimeout):
                sub.recv(timeout=0.1)
    assert [e.payload for e in got] == list(range(90, 100 + N))
    assert [e.version for e in got] == list(range(91, 101 + N))
