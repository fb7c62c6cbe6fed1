"""The SDK core without sockets: the Lazy Pirate flow, the publisher's watch, and the two fronts' parity."""

from __future__ import annotations

import inspect
import struct

import msgpack
import pytest

import sdk
import sdk.aio
from sdk.aio_sessions import AsyncSessionClient
from sdk.core.flows import Ask
from schemas.envelope import CONFIRM, WANT_VERSION, confirm_entry, decode_body, encode_body
from sdk.core.publishing import (
    LOOK,
    RECONNECTED,
    NUMBER_BASE as B,
    SIZE_ASK_RETRIES,
    SIZE_ASK_TIMEOUT,
    PublisherCore,
    PublishStats,
    Resend,
    WaitForBroker,
)
from sdk.request import REBUILD, Exchange, lazy_pirate
from sdk.sessions import SessionClient


def reply(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def test_lazy_pirate_rebuilds_after_each_lost_reply_then_gives_up() -> None:
    flow = lazy_pirate(b"req", timeout_ms=250, attempts=3, what="session service", endpoint="ipc://x")
    assert next(flow) == Exchange(b"req", 250)
    assert flow.send(None) is REBUILD
    assert flow.send(None) == Exchange(b"req", 250)
    with pytest.raises(StopIteration) as done:
        flow.send(reply(ok=True, result={"n": 1}))
    assert done.value.value == {"n": 1}

    flow = lazy_pirate(b"req", timeout_ms=250, attempts=2, what="broker", endpoint="ipc://x")
    steps = [next(flow), flow.send(None), flow.send(None), flow.send(None)]
    assert steps == [Exchange(b"req", 250), REBUILD, Exchange(b"req", 250), REBUILD]
    with pytest.raises(sdk.BusUnavailable, match=r"broker at ipc://x did not answer \(2 attempt\(s\), 0.25s each\)"):
        flow.send(None)


def test_lazy_pirate_raises_the_servers_error() -> None:
    flow = lazy_pirate(b"req", timeout_ms=100, attempts=1, what="session service", endpoint="ipc://x")
    next(flow)
    with pytest.raises(sdk.SessionNotFound):
        flow.send(reply(ok=False, code="not_found", message="no such session"))


class Publisher(PublisherCore):
    def __init__(self, *, publish_timeout: float = 5.0, max_event_size: int | None = None) -> None:
        self._init_publisher(name="p", publish_timeout=publish_timeout, validate=False, max_event_size=max_event_size)


def test_the_watch_waits_for_a_broker_that_left_counts_the_outage_and_relearns_the_limit() -> None:
    pub = Publisher()
    flow = pub._watch()
    assert next(flow) is LOOK
    step = flow.send([b"\x01", b"\x00"])  # the newest (un)subscription: the broker withdrew
    assert isinstance(step, WaitForBroker) and 0 < step.timeout <= 5.0
    assert pub.broker_outages == 1
    assert flow.send(True) is LOOK  # something came
    assert flow.send([b"\x01"]) is RECONNECTED  # a broker is back
    asked = flow.send(False)  # after a withdrawal, whatever the connection: its limit? (asked again if lost)
    assert asked == Ask("control", {"op": "ping"}, timeout=SIZE_ASK_TIMEOUT, retries=SIZE_ASK_RETRIES)
    with pytest.raises(StopIteration):
        flow.send({"max_event_size": 500})
    assert pub.max_event_size == 500


def test_the_watch_times_out_and_keeps_the_limit_it_was_given() -> None:
    pub = Publisher(max_event_size=800)
    flow = pub._watch()
    next(flow)
    flow.send([b"\x00"])
    with pytest.raises(sdk.PublishTimeout):
        flow.send(False)  # the wait ended with nothing
    flow = pub._watch()
    next(flow)
    assert flow.send([b"\x01"]) is RECONNECTED
    with pytest.raises(StopIteration):  # subscribed again on a new connection, but a limit given to connect() is kept
        flow.send(True)
    assert (pub.max_event_size, pub.broker_outages) == (800, 1)


def test_a_watch_with_nothing_pending_does_nothing() -> None:
    pub = Publisher()
    flow = pub._watch()
    next(flow)
    with pytest.raises(StopIteration):
        flow.send([])
    assert pub.broker_outages == 0


ANONYMOUS = encode_body(None, source="s", session_id=None, ts=1.0)


def sent(pub: Publisher, count: int, *, want: int = 0) -> list[bytes]:
    """``count`` events numbered and kept as the fronts do; the frames they sent, flat."""
    frames = []
    for _ in range(count):
        body = pub._identified(ANONYMOUS, pub._number + 1 == B + want)
        pub._sent(b"t", body)
        frames += (b"t", body)
    return frames


def confirmation(*entries: tuple[int, int, list[tuple[int, int]]]) -> bytes:
    return CONFIRM + b"".join(confirm_entry(*entry) for entry in entries)


def test_confirmations_free_the_buffer_and_skip_other_publishers_entries() -> None:
    pub = Publisher()
    frames = sent(pub, 5, want=3)
    size = len(ANONYMOUS) + 18
    assert frames[5][:1] == b"\x97" and len(frames[5]) == size
    assert struct.unpack_from("!xQxQ", frames[5], size - 18) == (pub.publisher_id, B + 3 | WANT_VERSION)
    assert msgpack.unpackb(frames[1])[5:] == [pub.publisher_id, B + 1]
    assert decode_body(frames[1]) == decode_body(ANONYMOUS)
    # numbers from 2^32 on: msgpack's own packer writes the same bytes as the hand-made identity
    assert frames[1] == msgpack.packb([*msgpack.unpackb(ANONYMOUS), pub.publisher_id, B + 1])
    pub._wanted[B + 3] = 0
    assert pub.publish_stats == PublishStats(sent=5, confirmed=0, resent=0, unconfirmed=5, unconfirmed_bytes=5 * size)
    other = pub.publisher_id ^ 1
    assert pub._absorb([confirmation((other, B + 5, [(B + 3, 99)]), (pub.publisher_id, B + 3, [(B + 3, 42)]))]) is None
    assert pub._wanted[B + 3] == 42
    assert pub.publish_stats == PublishStats(sent=5, confirmed=3, resent=0, unconfirmed=2, unconfirmed_bytes=2 * size)
    pub._absorb([confirmation((pub.publisher_id, B + 2, []))])  # an older confirmation says nothing new
    assert pub.publish_stats.confirmed == 3


def test_a_broker_that_subscribes_again_gets_every_unconfirmed_event_again_in_order() -> None:
    pub = Publisher(max_event_size=800)
    frames = sent(pub, 4)
    flow = pub._watch()
    next(flow)
    assert flow.send([confirmation((pub.publisher_id, B + 1, [])), b"\x01"]) is RECONNECTED
    step = flow.send(True)  # this publisher's connection is new: the broker may be too
    assert step == Resend(frames[2:])
    with pytest.raises(StopIteration):
        flow.send(None)
    assert pub.publish_stats.resent == 3


def test_a_subscription_repeated_on_the_same_connection_sends_nothing_again() -> None:
    """The broker greets every publisher's connection with a subscription to all: a bus whose own
    connection did not change (no handshake since the last look) keeps its events as they are."""
    pub = Publisher(max_event_size=800)
    sent(pub, 4)
    flow = pub._watch()
    next(flow)
    assert flow.send([confirmation((pub.publisher_id, B + 1, [])), b"\x01"]) is RECONNECTED
    with pytest.raises(StopIteration):
        flow.send(False)
    assert (pub.publish_stats.resent, pub.publish_stats.unconfirmed) == (0, 3)


def test_flush_reads_confirmations_until_all_are_in_and_times_out_otherwise() -> None:
    pub = Publisher()
    sent(pub, 2)
    flow = pub._flush(5.0)
    assert isinstance(next(flow), WaitForBroker)
    assert flow.send(True) is LOOK
    assert isinstance(flow.send([confirmation((pub.publisher_id, B + 1, []))]), WaitForBroker)
    assert flow.send(True) is LOOK
    with pytest.raises(StopIteration):
        flow.send([confirmation((pub.publisher_id, B + 2, []))])
    sent(pub, 1)
    with pytest.raises(sdk.PublishTimeout, match="number 3 were not all confirmed within 0s"):
        next(pub._flush(0.0))  # the time is up and event 3 is not confirmed


def public(cls: type) -> dict[str, list[str]]:
    """Public methods and properties of ``cls`` with their parameter names."""
    members: dict[str, list[str]] = {}
    for name, value in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members[name] = ["<property>"]
        elif callable(value):
            members[name] = list(inspect.signature(value).parameters)
    return members


@pytest.mark.parametrize(
    "sync, aio",
    [(sdk.Bus, sdk.aio.Bus), (sdk.Subscription, sdk.aio.Subscription), (SessionClient, AsyncSessionClient)],
    ids=["Bus", "Subscription", "SessionClient"],
)
def test_the_asyncio_front_has_every_method_of_the_sync_one(sync: type, aio: type) -> None:
    assert public(aio) == public(sync)


def test_seqs_requests_stay_within_the_brokers_control_limits() -> None:
    """A subscription's 10,000 patterns went to the broker in one ``seqs`` request, over its 1,024
    items and 64 KiB: the broker dropped it and the tail was never checked (the look timed out)."""
    from schemas.topics import MAX_PATTERNS
    from sdk.core.flows import SEQS_PATTERN_BYTES, SEQS_PATTERNS, seqs_chunks

    short = tuple(f"many:p{i}" for i in range(MAX_PATTERNS))
    long = tuple(f"long:{i:04d}" + "x" * 240 for i in range(1000))
    for patterns in (short, long):
        chunks = list(seqs_chunks(patterns))
        assert [p for chunk in chunks for p in chunk] == list(patterns)
        for chunk in chunks:
            assert 0 < len(chunk) <= SEQS_PATTERNS
            assert len(msgpack.packb({"op": "seqs", "patterns": list(chunk)})) <= SEQS_PATTERN_BYTES + 64
    assert list(seqs_chunks(())) == [()]  # no patterns: one request, every topic
