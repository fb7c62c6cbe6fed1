"""A broker restart a subscription did not see happen: found while idle, and the events the new
broker stamped before the subscription was back are counted (or end a ``drop`` subscription)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import sdk
from schemas.envelope import STAMP, encode_body, stamp
from sdk.core.decoding import EventDecoder
from sdk.core.flows import PING, Filter, Receive, drive
from tests.fronts import Front

BODY = encode_body({"n": 1}, source="test", session_id=None)


@pytest.mark.parametrize("policy", ["count", "drop"])
def test_a_broker_restarted_while_the_subscription_is_idle_is_noticed(home: Path, start, front: Front, policy: str) -> None:
    """An asyncio subscription used to see restarts only in the sequences: a restart while it was
    away, after which the new broker's first event it gets carries the next number, went unnoticed,
    and so did the events of the new broker it had missed."""
    broker = start("broker")
    with front.connect(home, name="test") as bus, bus.subscribe("t:*", policy=policy) as sub:
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


def test_a_sequence_going_backwards_counts_a_restart(home: Path, start, front: Front) -> None:
    broker = start("broker")
    with front.connect(home, name="test") as bus, bus.subscribe("t:*", policy="count") as sub:
        for i in range(50):
            bus.publish("t:x", i)
        assert [sub.recv(timeout=5).seq for _ in range(50)] == list(range(1, 51))
        assert sub.restarts == 0
        broker.stop()
        start("broker")
        for _ in range(40):  # until the subscription is back at the new broker
            bus.publish("t:x", "after")
            try:
                event = sub.recv(timeout=0.5)
                break
            except sdk.BusTimeout:
                continue
        else:
            raise AssertionError("no event from the restarted broker after 40 publishes")
        assert event.seq < 50 and sub.restarts == 1  # the sequence went backwards: a new broker


def _broker(epochs: list[int | None]):
    """A scripted broker for the core's flows (its servers): each control request gets the next
    ``first_version`` (None: no answer)."""
    answers = iter(epochs)

    class Control:
        @staticmethod
        def call(request: dict, *, timeout: float | None = None, retries: int | None = None) -> dict[str, int]:
            assert request == PING or request["op"] == "seqs"
            epoch = next(answers)
            if epoch is None:
                raise sdk.BusUnavailable("no answer")
            return {"first_version": epoch, "version": epoch, "seqs": {}, "next": None}

    def servers(name: str) -> type[Control]:
        assert name == "control"
        return Control

    return servers


def _feed(decoder: EventDecoder, perform, frames: tuple[bytes, bytes, bytes], got: list[sdk.Event]) -> None:
    """What a front does with one message: feed it, and settle a gap through the decoder's flow."""
    decoder.feed(*frames, got.append)
    if decoder.held is not None:
        drive(decoder.resolve(got.append), perform)


def _look(decoder: EventDecoder, perform, now: float) -> None:
    """An idle turn; a look for a lost tail gets its sync token answered at once."""
    tokens: list[bytes] = []

    def io(step: Filter | Receive) -> list[bytes] | None:
        if isinstance(step, Filter):
            tokens.append(step.prefix)
            return None
        return [tokens[-1], STAMP.pack(0, 0), b""]

    flow = decoder.idle(now, 5.0, lambda event: None)
    if flow is not None:
        drive(flow, perform, io)


@pytest.mark.parametrize("policy", ["count", "drop"])
def test_after_a_restart_seen_while_idle_the_next_event_shows_what_was_missed(policy: str) -> None:
    decoder = EventDecoder(("t:*",), policy)  # type: ignore[arg-type]
    decoder.epoch = 1
    perform = _broker([1, 7, 7])  # idle look, idle look (a new broker), the question on the gap
    got: list[sdk.Event] = []
    _feed(decoder, perform, (b"t:x", stamp(1, 1), BODY), got)
    _look(decoder, perform, 0.0)  # the same broker
    assert decoder.restarts == 0
    _look(decoder, perform, 10.0)  # a new one (first_version 7)
    assert decoder.restarts == 1
    if policy == "drop":
        with pytest.raises(sdk.SlowSubscriberError):
            _feed(decoder, perform, (b"t:x", stamp(9, 2), BODY), got)  # seq 2: seq 1 of the new broker was missed
        assert [e.seq for e in got] == [1]
    else:
        _feed(decoder, perform, (b"t:x", stamp(9, 2), BODY), got)
        assert [e.seq for e in got] == [1, 2]
    assert decoder.lost == 1


def test_looks_are_spaced_and_a_silent_broker_changes_nothing() -> None:
    decoder = EventDecoder(("t:*",), "count")
    decoder.epoch = 1
    perform = _broker([1, None])
    _look(decoder, perform, 0.0)
    _look(decoder, perform, 0.5)  # too soon: not asked (the answers would have run out)
    _look(decoder, perform, 5.0)  # no answer
    assert (decoder.restarts, decoder.epoch) == (0, 1)


@pytest.mark.parametrize("policy", ["count", "drop"])
def test_a_forward_jump_asks_which_run_the_broker_is(policy: str) -> None:
    """Issue 14: a sync subscription asked the broker on a forward jump, an asyncio one did not.
    Both now settle a gap through the same flow: a new broker's jump counts a restart and loses
    only what the new broker stamped before; the same broker's jump loses the difference."""
    for epochs, restarts, lost in (([1], 0, 3), ([5], 1, 4)):
        decoder = EventDecoder(("t:*",), policy)  # type: ignore[arg-type]
        decoder.epoch = 1
        perform = _broker(epochs)
        got: list[sdk.Event] = []
        _feed(decoder, perform, (b"t:x", stamp(1, 1), BODY), got)
        if policy == "drop":
            with pytest.raises(sdk.SlowSubscriberError) as error:
                _feed(decoder, perform, (b"t:x", stamp(9, 5), BODY), got)
            assert error.value.lost == lost
        else:
            _feed(decoder, perform, (b"t:x", stamp(9, 5), BODY), got)
            assert [e.seq for e in got] == [1, 5]
        assert (decoder.restarts, decoder.lost) == (restarts, lost)
