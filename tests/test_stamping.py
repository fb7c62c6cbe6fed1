"""The broker stamps every event with the global version and its per-topic sequence."""

from __future__ import annotations

from pathlib import Path

import sdk
from helpers import PUBLISHER, collect, finish, python_process


def test_sequential_publishes_get_versions_one_by_one(bus: sdk.Bus) -> None:
    with bus.subscribe() as sub:
        for i in range(200):
            bus.publish("test:seq", {"i": i})
        events = collect(sub, 200)
    assert [e.version for e in events] == list(range(1, 201))
    assert [e.payload["i"] for e in events] == list(range(200))
    assert [e.seq for e in events] == list(range(1, 201))


def test_per_topic_sequence(bus: sdk.Bus) -> None:
    types = ["a:one", "b:two", "a:one", "c:three", "a:one", "b:two"]
    with bus.subscribe() as sub:
        for t in types:
            bus.publish(t, None)
        events = collect(sub, len(types))
    assert [(e.type, e.version, e.seq) for e in events] == [
        ("a:one", 1, 1),
        ("b:two", 2, 1),
        ("a:one", 3, 2),
        ("c:three", 4, 1),
        ("a:one", 5, 3),
        ("b:two", 6, 2),
    ]
    assert bus.stats()["topics"] == {"a:one": 3, "b:two": 2, "c:three": 1}


def test_event_fields(bus: sdk.Bus) -> None:
    with bus.subscribe("channel:message") as sub:
        bus.publish("channel:message", {"text": "hi"}, session_id="s-1")
        bus.publish("channel:message", [1, 2])
        first, second = collect(sub, 2)
    assert (first.type, first.payload, first.session_id, first.source) == ("channel:message", {"text": "hi"}, "s-1", "test")
    assert (second.payload, second.session_id) == ([1, 2], None)
    assert first.ts <= second.ts


def test_no_topic_subscription_gets_all(bus: sdk.Bus) -> None:
    types = ["channel:message", "agent:spawned", "session:created", "x"]
    with bus.subscribe() as everything, bus.subscribe("**") as star_star:
        for t in types:
            bus.publish(t, {})
        assert [e.type for e in collect(everything, 4)] == types
        assert [e.type for e in collect(star_star, 4)] == types


def test_topic_filtering(bus: sdk.Bus) -> None:
    with bus.subscribe("channel:message") as sub:
        for t in ["agent:spawned", "channel:message", "channel:message_x", "channel", "channel:message"]:
            bus.publish(t, {"t": t})
        bus.publish("channel:message", "last")
        events = collect(sub, 3)
    assert [(e.version, e.payload) for e in events] == [
        (2, {"t": "channel:message"}),
        (5, {"t": "channel:message"}),
        (6, "last"),
    ]


def test_two_subscribers_both_receive(bus: sdk.Bus) -> None:
    with bus.subscribe("agent:spawned") as one, bus.subscribe("agent:spawned") as two:
        for i in range(50):
            bus.publish("agent:spawned", {"agent_id": str(i)})
        got_one, got_two = collect(one, 50), collect(two, 50)
    assert got_one == got_two
    assert [e.version for e in got_one] == list(range(1, 51))


def test_ordering_across_publisher_processes(home: Path, bus: sdk.Bus) -> None:
    n, publishers = 300, 4
    with bus.subscribe("load:**") as sub:
        procs = [
            python_process(PUBLISHER, str(home), f"p{k}", str(n), "load:a", "load:b", "load:c")
            for k in range(publishers)
        ]
        events = collect(sub, n * publishers, timeout=20)
        for proc in procs:
            finish(proc)
    versions = [e.version for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert versions == list(range(1, n * publishers + 1))  # this bus had no other events
    for k in range(publishers):
        mine = [e.payload["i"] for e in events if e.source == f"p{k}"]
        assert mine == list(range(n)), f"publisher p{k}'s events out of order or missing"
    for topic in ("load:a", "load:b", "load:c"):
        assert [e.seq for e in events if e.type == topic] == list(range(1, n * publishers // 3 + 1))
    stats = bus.stats()
    assert (stats["events_in"], stats["malformed"], stats["rejected"]) == (n * publishers, 0, 0)
