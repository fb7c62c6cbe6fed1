"""Losses that fragments make (schemas/fragments.py): a subscriber that receives fragments but no
whole event still received something a full queue cut short, so the loss must show (PROTOCOL.md
§9: "the loss is always visible"), and a ``recover`` subscription must fill it from the log."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import sdk
from broker.bus.config import BOUNDED_BYTES
from helpers import wait_for
from tests.fronts import Front

# A queue of 8 messages at the broker, 1 at the subscriber: a 1 MB event (61 fragments of 17 KiB)
# cannot fit, so some of its fragments are always dropped.
SMALL_QUEUES = ("--sub-hwm", "8", "--sub-bytes", str(BOUNDED_BYTES))
BIG = 1_000_000


def drain(sub, seconds: float) -> list[sdk.Event]:
    """What arrives within ``seconds`` (the receive idles meanwhile, so looks for a lost tail run)."""
    got: list[sdk.Event] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += sub.recv_many(timeout=0.2)
    return got


def test_events_whose_fragments_were_dropped_are_counted_lost(start, home: Path, front: Front) -> None:
    """Found by publishing 3 events of 1 MB to a subscriber with short queues: it received none
    and counted none lost (with whole messages, 3 received)."""
    start("broker", *SMALL_QUEUES)
    with front.connect(home, name="big") as bus, bus.subscribe("big:*", policy="count", hwm=1) as sub:
        for _ in range(3):
            bus.publish("big:one", os.urandom(BIG))
        bus.flush(timeout=10)
        got = drain(sub, 2.5)
        assert sub.lost > 0, "nothing was dropped: the queues held the events, so nothing was tested"
        assert len(got) + sub.lost == 3


def test_a_drop_subscription_ends_when_an_events_fragments_were_dropped(start, home: Path, front: Front) -> None:
    start("broker", *SMALL_QUEUES)
    with front.connect(home, name="big") as bus, bus.subscribe("big:*", hwm=1) as sub:
        bus.publish("big:one", os.urandom(BIG))
        bus.flush(timeout=10)
        with pytest.raises(sdk.SlowSubscriberError):
            sub.recv(timeout=3)


def test_recover_fills_a_first_event_whose_fragments_were_dropped(start, home: Path, front: Front) -> None:
    """Found the same way: the first event's fragments partly dropped, the next event whole, and
    recover delivered only the second (it started its sequence there): the first was skipped,
    neither delivered from the log nor counted."""
    start("broker", *SMALL_QUEUES)
    start("event-log")
    with front.connect(home, name="big") as bus, bus.subscribe("big:*", policy="recover", hwm=1) as sub:
        first = os.urandom(BIG)
        bus.publish("big:one", first)
        bus.flush(timeout=10)  # confirmed once stamped, and the broker sends in the same turn: every
        bus.publish("big:one", b"small")  # fragment was sent (or dropped) before this one
        got = [sub.recv(timeout=10) for _ in range(2)]
        assert [(e.seq, e.payload) for e in got] == [(1, first), (2, b"small")]


def test_the_head_of_a_topic_lost_before_its_first_event_arrived_is_counted(start, home: Path) -> None:
    """Found while checking that received + lost adds up with several topics: a topic whose first
    events a full queue dropped started its sequence at the first one that arrived, and the ones
    before it were never counted (500 events on each of 3 topics: 31 received, 775 counted lost)."""
    start("broker", "--sub-hwm", "8", "--sub-bytes", "0", "--max-run", "1")
    with sdk.connect(home, name="head") as bus, bus.subscribe("head:**", policy="count", hwm=1) as sub:
        sent = 0
        for topic in ("head:a", "head:b", "head:c"):
            for _ in range(500):
                bus.publish(topic, os.urandom(100))
                sent += 1
        bus.flush(timeout=10)
        got: list[sdk.Event] = []

        def read() -> int:
            got.extend(sub.recv_many(max=64, timeout=0.2))
            return len(got) + sub.lost

        wait_for(read, lambda total: total >= sent, timeout=10, what="every event received or counted lost")
        assert len(got) + sub.lost == sent


def test_a_topic_no_pattern_matches_shows_no_loss_from_its_history(start, home: Path) -> None:
    """A pattern starting with a wildcard subscribes every type and filters here: the history of
    a topic it does not match (sequence 50 before the subscription) is no loss of it."""
    start("broker")
    with sdk.connect(home, name="other") as bus:
        for _ in range(50):
            bus.publish("other:y", b"old")
        bus.flush(timeout=10)
        with bus.subscribe("*:x") as sub:
            bus.publish("other:y", b"new")
            bus.publish("other:x", b"mine")
            assert sub.recv(timeout=5).payload == b"mine"
            assert sub.lost == 0
