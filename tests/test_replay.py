"""Replay from the event log (issue 4): ranges and filters, and the ``subscribe(since=)`` seam."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import sdk
from tests.helpers import REPO
from tests.helpers import wait_for

TYPES = ["channel:message", "agent:spawned", "agent:completed", "trace:event"]


@pytest.fixture
def logged(home: Path, event_log, front_bus: sdk.Bus) -> sdk.Bus:
    """A Bus of each front (tests/fronts.py) with 40 events logged: event i has version i + 1, type TYPES[i % 4], session s-(i % 3) if i is even."""
    for i in range(40):
        front_bus.publish(TYPES[i % 4], {"i": i}, session_id=f"s-{i % 3}" if i % 2 == 0 else None)
    wait_for(front_bus.log_stats, lambda s: s["last"] == 40, what="40 events logged")
    return front_bus


def versions(events) -> list[int]:
    return [e.version for e in events]


def test_replay_everything_in_version_order(logged: sdk.Bus) -> None:
    events = list(logged.replay())
    assert versions(events) == list(range(1, 41))
    assert [e.payload["i"] for e in events] == list(range(40))
    assert [e.type for e in events] == [TYPES[i % 4] for i in range(40)]


def test_replay_version_ranges(logged: sdk.Bus) -> None:
    assert versions(logged.replay(since=35)) == [36, 37, 38, 39, 40]
    assert versions(logged.replay(since=3, until=7)) == [4, 5, 6, 7]
    assert versions(logged.replay(until=2)) == [1, 2]
    assert versions(logged.replay(since=40)) == []
    assert versions(logged.replay(since=5, until=5)) == []


def test_replay_patterns(logged: sdk.Bus) -> None:
    assert versions(logged.replay("trace:event")) == list(range(4, 41, 4))
    assert versions(logged.replay("agent:*", until=10)) == [2, 3, 6, 7, 10]
    assert versions(logged.replay("channel:message", "agent:completed", since=30)) == [31, 33, 35, 37, 39]
    assert versions(logged.replay("**", since=38)) == [39, 40]
    assert versions(logged.replay("nothing:here")) == []
    with pytest.raises(sdk.InvalidEvent):
        list(logged.replay("agent:**:x"))


def test_replay_by_session_and_time(logged: sdk.Bus) -> None:
    assert versions(logged.replay(session_id="s-1")) == [i + 1 for i in range(40) if i % 2 == 0 and i % 3 == 1]
    assert versions(logged.replay("agent:*", session_id="s-0")) == [
        i + 1 for i in range(40) if i % 2 == 0 and i % 3 == 0 and i % 4 in (1, 2)
    ]
    events = list(logged.replay())
    middle = events[10].ts
    assert versions(logged.replay(ts_from=middle)) == [e.version for e in events if e.ts >= middle]
    assert versions(logged.replay(ts_until=middle)) == [e.version for e in events if e.ts < middle]
    assert versions(logged.replay(ts_from=time.time() + 3600)) == []


def test_replay_pages_through_a_large_log(home: Path, event_log, bus: sdk.Bus) -> None:
    n = 12_345  # more than two pages
    for i in range(n):
        bus.publish("trace:event", i)
    wait_for(bus.log_stats, lambda s: s["last"] == n, what=f"{n} events logged")
    assert [e.payload for e in bus.replay()] == list(range(n))
    assert [e.payload for e in bus.replay("trace:*", since=n - 3)] == [n - 3, n - 2, n - 1]


def test_log_tail(logged: sdk.Bus) -> None:
    assert versions(logged.log_tail(limit=3)) == [38, 39, 40]
    assert versions(logged.log_tail("agent:spawned", limit=2)) == [34, 38]
    assert versions(logged.log_tail(session_id="s-2", limit=2)) == [
        i + 1 for i in range(40) if i % 2 == 0 and i % 3 == 2
    ][-2:]


def test_replay_without_an_event_log_is_unavailable(home: Path, broker) -> None:
    with sdk.connect(home, name="test", timeout=0.3) as bus:
        with pytest.raises(sdk.BusUnavailable):
            list(bus.replay())


PUBLISHER = """
import signal, sys, time, sdk
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
with sdk.connect(sys.argv[1], name="publisher") as bus:
    i = 0
    while not stopping:
        bus.publish("trace:event", i)
        i += 1
        if i % 100 == 0:
            time.sleep(0.002)  # sync-ok: pacing, so that a subscriber on a shared CI core keeps up
        if i == 200:
            print("running", flush=True)
print(i, flush=True)
"""


def test_since_seam_under_a_live_publisher(home: Path, event_log, bus: sdk.Bus) -> None:
    """Subscribe with since= while another process publishes: every event once, in order."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(home)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "running\n"
        wait_for(bus.log_stats, lambda s: s["last"] >= 100, what="100 events logged")
        with bus.subscribe("trace:event", since=50, hwm=1_000_000) as sub:
            at_subscribe = bus.stats()["version"]
            got = [sub.recv(timeout=10)]
            while got[-1].version < at_subscribe + 2_000:  # well past the seam, still publishing
                got.append(sub.recv(timeout=10))
            proc.terminate()
            published = int(proc.stdout.readline())
            while got[-1].version < published:
                got.append(sub.recv(timeout=10))
            with pytest.raises(sdk.BusTimeout):
                sub.recv(timeout=0.2)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert [e.version for e in got] == list(range(51, published + 1))
    assert [e.payload for e in got] == list(range(50, published))


def test_since_filters_patterns_and_joins_live(logged: sdk.Bus) -> None:
    with logged.subscribe("agent:*", since=30) as sub:
        logged.publish("agent:spawned", {"live": True})
        logged.publish("channel:message", {"live": True})
        logged.publish("agent:completed", {"live": True})
        got = [sub.recv(timeout=5) for _ in range(7)]
        with pytest.raises(sdk.BusTimeout):
            sub.recv(timeout=0.1)
    assert versions(got) == [31, 34, 35, 38, 39, 41, 43]
    assert [e.payload for e in got[-2:]] == [{"live": True}, {"live": True}]


def test_since_in_the_future_waits_for_live_events(logged: sdk.Bus) -> None:
    with logged.subscribe(since=41) as sub:
        for i in range(3):
            logged.publish("trace:event", i)
        assert [sub.recv(timeout=5).version for _ in range(2)] == [42, 43]
