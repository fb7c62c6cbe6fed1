"""Lifecycle events the broker publishes itself with --lifecycle-events (issue 6, monitoring)."""

from __future__ import annotations

from pathlib import Path

import sdk
from schemas.catalogue import validate
from tests.helpers import wait_for


def _next(sub, event_type: str) -> sdk.Event:
    event = sub.recv(timeout=5.0)
    if event.type == "bus:subscriber_connected" and event.seq == 1 and event_type != event.type:
        # our own subscriber's connection: whether it reaches us races with our subscription
        event = sub.recv(timeout=5.0)
    assert event.type == event_type, event
    assert event.source == "broker" and event.session_id is None
    validate(event.type, event.payload)  # the payload matches the catalogue entry
    return event


def test_connects_and_disconnects_are_published_in_the_version_sequence(home: Path, start) -> None:
    start("broker", "--lifecycle-events")
    with sdk.connect(home, name="watcher") as bus:
        assert bus.stats()["topics"] == {"bus:started": 1}
        with bus.subscribe("bus:*") as sub:
            with sdk.connect(home, name="publisher") as other:
                other.publish("app:hello", {"n": 1})
                connected = _next(sub, "bus:publisher_connected")
                assert connected.payload["publishers"] == 1
                assert connected.payload["endpoint"] == bus.endpoints.publish
                second = other.subscribe("app:*")
                joined = _next(sub, "bus:subscriber_connected")
                assert joined.payload["subscribers"] == 2  # ours and the other's
                second.close()
                left = _next(sub, "bus:subscriber_disconnected")
                assert left.payload["subscribers"] == 1
                assert left.payload["connection"] == joined.payload["connection"]
            gone = _next(sub, "bus:publisher_disconnected")
            assert gone.payload["publishers"] == 0
            assert gone.payload["connection"] == connected.payload["connection"]
            # our own subscriber's connection was the first bus:subscriber_connected
            assert [connected.seq, joined.seq, left.seq, gone.seq] == [1, 2, 1, 1]
            assert connected.version < joined.version < left.version < gone.version
        stats = wait_for(bus.stats, lambda s: s["subscribers"] == 0, what="our subscriber gone")
    # one version per event: bus:started, app:hello, the four connection changes seen here, and our
    # own subscriber's connect and disconnect
    assert stats["topics"] == {
        "bus:started": 1,
        "app:hello": 1,
        "bus:publisher_connected": 1,
        "bus:publisher_disconnected": 1,
        "bus:subscriber_connected": 2,
        "bus:subscriber_disconnected": 2,
    }
    assert stats["version"] == 8 and stats["lifecycle_events"] == 7


def test_the_event_log_keeps_lifecycle_events(home: Path, start) -> None:
    start("broker", "--lifecycle-events")
    start("event-log")
    with sdk.connect(home, name="t") as bus:
        bus.publish("app:x", {})
        version = wait_for(bus.stats, lambda s: s["topics"].get("app:x") == 1)["version"]
        wait_for(bus.log_stats, lambda s: s["last"] == version, what=f"the log at version {version}")
        logged = [e.type for e in bus.replay("bus:*")]
    # bus:started always precedes the log's connection; whether the log's own subscriber_connected
    # reached it is a race with its subscription; our publisher connected once the log was live
    assert logged in (["bus:publisher_connected"], ["bus:subscriber_connected", "bus:publisher_connected"])


def test_a_broker_that_awaits_the_log_holds_its_own_events_for_it(home: Path, start) -> None:
    """As under ``pryxbus up`` (--await-log): the log gets bus:started and the connections made
    before it subscribed, so it starts with no gap (it used to miss them and count a gap)."""
    start("broker", "--lifecycle-events", "--await-log", "60")
    start("event-log")
    with sdk.connect(home, name="t") as bus:
        version = wait_for(bus.stats, lambda s: s["taking_events"], what="the log subscribed")["version"]
        log_stats = wait_for(bus.log_stats, lambda s: s["last"] >= version, what=f"the log at version {version}")
        logged = [(e.version, e.type) for e in bus.replay(until=version)]
    assert logged[0] == (1, "bus:started")
    assert [v for v, _ in logged] == list(range(1, version + 1))
    assert (log_stats["gaps"], log_stats["lost"]) == (0, 0)


def test_off_by_default(home: Path, broker, bus: sdk.Bus) -> None:
    with bus.subscribe() as sub:
        bus.publish("app:only", {})
        assert sub.recv(timeout=5.0).type == "app:only"
    stats = bus.stats()
    assert stats["topics"] == {"app:only": 1} and stats["lifecycle_events"] == 0
