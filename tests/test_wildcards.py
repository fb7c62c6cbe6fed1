"""Subscription patterns through the broker: exact, ``*``, trailing ``**``, ``**``; each event once
(on both fronts: ``front_bus``)."""

from __future__ import annotations

import pytest

import sdk
from helpers import collect

TYPES = ["agent:spawned", "agent:completed", "agent:x:y", "agents:spawned", "channel:message", "session:created", "session:a:b", "agent"]


def publish_all(bus: sdk.Bus) -> None:
    for t in TYPES:
        bus.publish(t, {"t": t})
    bus.publish("end", None)  # every subscription below also matches "end": it bounds the receive


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (("agent:*",), ["agent:spawned", "agent:completed"]),
        (("*:spawned",), ["agent:spawned", "agents:spawned"]),
        (("agent:**",), ["agent:spawned", "agent:completed", "agent:x:y"]),
        (("session:**", "channel:message"), ["channel:message", "session:created", "session:a:b"]),
        (("*",), ["agent"]),
        (("**",), TYPES),
    ],
    ids=lambda p: "|".join(p) if isinstance(p, tuple) else None,
)
def test_patterns_through_the_broker(front_bus: sdk.Bus, patterns: tuple[str, ...], expected: list[str]) -> None:
    with front_bus.subscribe(*patterns, "end") as sub:
        publish_all(front_bus)
        got = collect(sub, len(expected) + 1)
    assert [e.type for e in got] == [*expected, "end"]


def test_overlapping_patterns_deliver_once(front_bus: sdk.Bus) -> None:
    with front_bus.subscribe("agent:spawned", "agent:*", "agent:**", "*:spawned", "end") as sub:
        publish_all(front_bus)
        got = collect(sub, 5)
    assert [e.type for e in got] == ["agent:spawned", "agent:completed", "agent:x:y", "agents:spawned", "end"]
    assert [e.version for e in got] == [1, 2, 3, 4, 9]


def test_two_subscriptions_each_get_their_copy(front_bus: sdk.Bus) -> None:
    with front_bus.subscribe("agent:*", "end") as one, front_bus.subscribe("agent:**", "agent:spawned", "end") as two:
        publish_all(front_bus)
        got_one, got_two = collect(one, 3), collect(two, 4)
    assert [e.type for e in got_one] == ["agent:spawned", "agent:completed", "end"]
    assert [e.type for e in got_two] == ["agent:spawned", "agent:completed", "agent:x:y", "end"]
    assert got_one[0] == got_two[0]


INVALID_PATTERNS = ["", "a:**:b", "**:a", "a*", "a::b", "a b", 42, None, b"agent:*"]
INVALID_TYPES = ["", "agent:*", "a::b", "a b", "\x00sync:x", "x" * 256, 7, None, b"agent"]


def test_invalid_patterns_raise(bus: sdk.Bus) -> None:
    for pattern in INVALID_PATTERNS:  # one broker for all of them: each case is a pure check
        with pytest.raises(sdk.InvalidEvent) as info:
            bus.subscribe("ok", pattern)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError), pattern


def test_invalid_types_raise_and_send_nothing(bus: sdk.Bus) -> None:
    with bus.subscribe() as sub:
        for event_type in INVALID_TYPES:
            with pytest.raises(sdk.InvalidEvent) as info:
                bus.publish(event_type, {})  # type: ignore[arg-type]
            assert isinstance(info.value, ValueError), event_type
        bus.publish("after", None)
        assert sub.recv(timeout=5).version == 1
    assert (bus.stats()["rejected"], bus.stats()["malformed"]) == (0, 0)


def test_invalid_policy_raises(bus: sdk.Bus) -> None:
    with pytest.raises(sdk.InvalidEvent):
        bus.subscribe("a", policy="ignore")  # type: ignore[arg-type]


def test_any_number_of_patterns_up_to_the_limit_works(front_bus: sdk.Bus) -> None:
    """Issue 16: 1,000 patterns or more overflowed the SUB socket's send HWM, so the sync
    subscription was lost and subscribe failed with 'is it running?'. Up to MAX_PATTERNS work;
    one more is refused at once."""
    from schemas.topics import MAX_PATTERNS

    patterns = [f"many:p{i}" for i in range(MAX_PATTERNS)]
    with front_bus.subscribe(*patterns) as sub:
        front_bus.publish("many:other", 0)
        front_bus.publish(patterns[-1], 1)
        front_bus.publish(patterns[0], 2)
        assert [(e.type, e.payload) for e in collect(sub, 2)] == [(patterns[-1], 1), (patterns[0], 2)]
    with pytest.raises(sdk.InvalidEvent, match=f"at most {MAX_PATTERNS} patterns, not {MAX_PATTERNS + 1}"):
        front_bus.subscribe(*patterns, "many:one-more")


@pytest.mark.parametrize("length", [246, 247, 255])
def test_every_valid_type_can_be_subscribed_to(front_bus: sdk.Bus, length: int) -> None:
    """Issue 16: a type of 247-255 bytes gave a SUBSCRIBE frame (10 bytes + prefix, ZMTP 3.1) over
    the broker's subscription limit, so subscribing to it timed out though ``**`` got its events.
    Its prefix is now cut to MAX_PREFIX bytes; a type sharing those bytes is not delivered."""
    event_type = "long:" + "x" * (length - 5)
    sibling = event_type[:-1] + "y"
    with front_bus.subscribe(event_type) as sub, front_bus.subscribe("long:*") as wide:
        front_bus.publish(sibling, 0)
        front_bus.publish(event_type, length)
        assert [e.payload for e in collect(wide, 2)] == [0, length]
        assert sub.recv(timeout=5).payload == length
