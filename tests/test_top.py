"""pryxbus top: one frame of a stack's figures, down parts, and rates from two samples."""

from __future__ import annotations

import json

import pytest

import sdk
from sdk.monitor import Sampler, figures
from schemas.endpoints import Endpoints
from tests.helpers import pryxbus, wait_for


def _stats_after(bus: sdk.Bus, version: int) -> dict:
    return wait_for(bus.stats, lambda s: s["version"] == version, what=f"broker at version {version}")


def test_once_with_nothing_running_shows_every_part_down(home) -> None:
    result = pryxbus("top", "--once", home=home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["broker", "down"],
        ["event", "log"],
        ["sessions", "down"],
    ]
    assert "event log     down" in result.stdout


def test_once_shows_the_whole_stack(home, start) -> None:
    start("broker")
    start("session-service")
    start("event-log")
    with sdk.connect(home, name="top-test") as bus:
        for i in range(3):
            bus.publish("chat:message", {"i": i})
        bus.publish("agent:spawned", {"agent_id": "a"})
        bus.sessions.create("one")
        with pytest.raises(sdk.SessionNotFound):
            bus.sessions.get("missing")
        _stats_after(bus, 5)  # and the session service's session:created
        wait_for(bus.log_stats, lambda s: s["last"] == 5, what="event log at version 5")
        result = pryxbus("top", "--once", home=home)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "version     5   events 5   rate -" in out
    # the bus and the session service publish; the event log subscribes
    assert "publishers  2   subscribers 1" in out
    assert "malformed   0   rejected 0" in out
    assert "events      5   last 5   lag 0" in out
    assert "lost        0   gaps 0" in out
    assert "sessions    1   requests 2   rate -" in out  # create + get; stats polls are not counted
    assert "errors      1 (not_found 1)" in out
    service = [line for line in out.splitlines() if line.startswith("  service     ")]
    assert len(service) == 1 and service[0].endswith(" µs per request"), service  # a measured figure
    assert service[0].split()[1].isdigit(), service
    table = out.split("TOPIC", 1)[1].splitlines()[1:]
    assert {line.split()[0]: line.split()[1] for line in table} == {
        "chat:message": "3",
        "agent:spawned": "1",
        "session:created": "1",
    }


def test_down_parts_beside_a_running_broker(home, broker) -> None:
    result = pryxbus("top", "--once", home=home)
    assert result.returncode == 0, result.stderr
    assert "broker        up" in result.stdout
    assert "event log     down" in result.stdout
    assert "sessions      down" in result.stdout


def test_rates_come_from_two_samples(home, event_log, bus: sdk.Bus) -> None:
    with Sampler(Endpoints.for_home(home)) as sampler:
        first = sampler.sample()
        for i in range(5):
            bus.publish("trace:event", {"name": str(i)})
        bus.publish("agent:spawned", {"agent_id": "x"})
        _stats_after(bus, first.broker["version"] + 6)
        wait_for(bus.log_stats, lambda s: s["last"] == 6, what="event log at version 6")
        second = sampler.sample()
    f = figures(second, first)
    seconds = second.at - first.at
    assert f["up"] == {"broker": True, "sessions": False, "log": True}
    assert f["broker"]["rate"] * seconds == pytest.approx(6)
    assert {t: r * seconds for t, r in f["broker"]["topic_rates"].items()} == pytest.approx(
        {"trace:event": 5, "agent:spawned": 1}
    )
    assert f["log"]["lag"] == 0
    assert figures(second)["broker"]["rate"] is None  # a single sample has no rate


def test_json_frame(home, broker, bus: sdk.Bus) -> None:
    bus.publish("app:one", {})
    _stats_after(bus, 1)
    result = pryxbus("top", "--once", "--json", home=home)
    assert result.returncode == 0, result.stderr
    frame = json.loads(result.stdout)
    assert frame["up"] == {"broker": True, "sessions": False, "log": False}
    assert {k: frame["broker"][k] for k in ("version", "events", "publishers", "topics", "rate")} == {
        "version": 1,
        "events": 1,
        "publishers": 1,
        "topics": {"app:one": 1},
        "rate": None,
    }
