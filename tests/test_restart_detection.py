"""A broker restart a subscription did not see happen: found while idle, and the events the new
broker stamped before the subscription was back are counted (or end a ``drop`` subscription)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import sdk
import sdk.aio
from schemas.envelope import encode_body, stamp
from sdk.subscription import EventDecoder

BODY = encode_body({"n": 1}, source="test", session_id=None)


def test_a_broker_restarted_while_the_subscription_is_idle_is_noticed(home: Path, start) -> None:
    broker = start("broker")
    with sdk.connect(home, name="test") as bus, bus.subscribe("t:*", policy="count") as sub:
        bus.publish("t:x", 1)
        assert sub.recv(timeout=5).seq == 1
        broker.stop()
        start("broker")
        give_up = time.monotonic() + 30
        while sub.restarts == 0:  # nothing is published: only the idle look can tell
            with pytest.raises(sdk.BusTimeout):
                sub.recv(timeout=0.3)
            assert time.monotonic() < give_up, "the restart was never noticed"
        bus.publish("t:x", 2)
        event = sub.recv(timeout=5)
        assert (event.payload, event.seq, sub.restarts, sub.lost) == (2, 1, 1, 0)



@pytest.mark.parametrize("policy", ["count", "drop"])
def test_an_asyncio_subscription_notices_a_restart_while_idle(home: Path, start, policy: str) -> None:
    """The same for ``sdk.aio``, which used to see restarts only in the sequences: a restart while
    it was away, after which the new broker's first event it gets carries the next number, went
    unnoticed, and so did the events of the new broker it had missed."""
    broker = start("broker")

    async def main() -> tuple[object, ...]:
        async with sdk.aio.connect(home, name="test") as bus, bus.subscribe("t:*", policy=policy) as sub:
            await bus.publish("t:x", 1)
            assert (await sub.recv(timeout=5)).seq == 1
            broker.stop()
            start("broker")
            give_up = time.monotonic() + 30
            while sub.restarts == 0:  # nothing is published: only the idle look can tell
                with pytest.raises(sdk.BusTimeout):
                    await sub.recv(timeout=0.3)
                assert time.monotonic() < give_up, "the restart was never noticed"
            await bus.publish("t:x", 2)
            event = await sub.recv(timeout=5)
            return event.payload, event.seq, sub.restarts, sub.lost

    assert asyncio.run(asyncio.wait_for(main(), 60)) == (2, 1, 1, 0)

def _decoder(policy: str, epochs: list[int]) -> EventDecoder:
    decoder = EventDecoder(("t:*",), policy)  # type: ignore[arg-type]
    answers = iter(epochs)
    decoder.epoch = 1
    decoder.idle_probe = lambda timeout: next(answers)
    decoder.probe = lambda: decoder.epoch  # asked on the gap: the broker we already know
    return decoder


@pytest.mark.parametrize("policy", ["count", "drop"])
def test_after_a_restart_seen_while_idle_the_next_event_shows_what_was_missed(policy: str) -> None:
    decoder = _decoder(policy, [1, 7])
    got: list[sdk.Event] = []
    decoder.feed(b"t:x", stamp(1, 1), BODY, got.append)
    decoder.look_for_restart(0.0, 0.2)  # the same broker
    assert decoder.restarts == 0
    decoder.look_for_restart(10.0, 0.2)  # a new one (first_version 7)
    assert decoder.restarts == 1
    if policy == "drop":
        with pytest.raises(sdk.SlowSubscriberError):
            decoder.feed(b"t:x", stamp(9, 2), BODY, got.append)  # seq 2: seq 1 of the new broker was missed
    else:
        decoder.feed(b"t:x", stamp(9, 2), BODY, got.append)
        assert [e.seq for e in got] == [1, 2]
    assert decoder.lost == 1


def test_looks_are_spaced_and_a_silent_broker_changes_nothing() -> None:
    decoder = _decoder("count", [1])
    decoder.look_for_restart(0.0, 0.2)
    decoder.look_for_restart(0.5, 0.2)  # too soon: not asked (the answers would have run out)

    def silent(timeout: float) -> int:
        raise sdk.BusUnavailable("no answer")

    decoder.idle_probe = silent
    decoder.look_for_restart(5.0, 0.2)
    assert (decoder.restarts, decoder.epoch) == (0, 1)
