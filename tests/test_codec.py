"""The envelope codec (schemas/envelope.py): pure functions, no sockets."""

from __future__ import annotations

import struct

import msgpack
import pytest

from schemas.envelope import (
    BODY_MARK,
    DURABLE,
    DURABLE_MARK,
    ENVELOPE_VERSION,
    IDENTIFIED_MARK,
    STAMP,
    WANT_VERSION,
    Envelope,
    MalformedEvent,
    decode_body,
    decode_deliver,
    decode_header,
    encode_body,
    encode_publish,
    publisher_of,
    run_stamp,
    split_run,
    stamp,
)

PAYLOADS = [None, 0, -1, 2**63 - 1, 1.5, "text", "ünïcode ✓", b"\x00\xffbytes", [1, [2, [3]]], {"a": {"b": [1, None]}}, {1: "int key"}]


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_body_round_trip(payload: object) -> None:
    body = encode_body(payload, source="src", session_id="s-1", ts=12.5)
    assert body[:1] == BODY_MARK == b"\x95"
    assert decode_body(body) == (12.5, "src", "s-1", payload)


def test_publish_frames_and_deliver_round_trip() -> None:
    topic, body = encode_publish("channel:message", {"text": "hi"}, source="tui", ts=1700000000.5)
    assert topic == b"channel:message"
    assert body == bytes.fromhex("95 01 cb 41 d9 54 fc 40 20 00 00 a3 74 75 69 c0 81 a4 74 65 78 74 a2 68 69")
    envs = decode_deliver([topic, stamp(7, 3), body])
    assert envs == [Envelope("channel:message", {"text": "hi"}, 7, 3, 1700000000.5, "tui", None)]


def test_a_run_carries_consecutive_versions_and_sequences() -> None:
    bodies = [encode_body({"n": n}, source="p", session_id=None, ts=float(n)) for n in range(3)]
    run = run_stamp(10, 4, [len(b) for b in bodies])
    assert len(run) == 16 + 4 * 3
    assert run[:16] == stamp(10, 4)
    assert split_run(run, b"".join(bodies)) == [(10, 4, bodies[0]), (11, 5, bodies[1]), (12, 6, bodies[2])]
    envs = decode_deliver([b"a:b", run, b"".join(bodies)])
    assert [(e.version, e.topic_seq, e.payload) for e in envs] == [(10, 4, {"n": 0}), (11, 5, {"n": 1}), (12, 6, {"n": 2})]


def test_a_single_event_is_a_run_of_one() -> None:
    body = encode_body(None, source="p", session_id=None)
    assert split_run(stamp(3, 2), body) == [(3, 2, body)]


def test_body_is_a_five_element_array_with_the_envelope_version() -> None:
    body = encode_body({"k": 1}, source="x", session_id=None, ts=1.0)
    assert msgpack.unpackb(body, raw=False) == [ENVELOPE_VERSION, 1.0, "x", None, {"k": 1}]


def test_encode_body_default_ts_is_now() -> None:
    ts, *_ = decode_body(encode_body(None, source="x", session_id=None))
    assert isinstance(ts, float) and ts > 1.6e9


def test_stamp_layout() -> None:
    assert STAMP.size == 16
    assert stamp(1, 2) == (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    assert STAMP.unpack(stamp(2**64 - 1, 5)) == (2**64 - 1, 5)


def test_payload_msgpack_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode_body(object(), source="x", session_id=None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x95\x01",  # truncated
        msgpack.packb([1, 1.0, "x", None]),  # 4 elements
        msgpack.packb([2, 1.0, "x", None, {}]),  # unknown envelope version
        msgpack.packb({"v": 1}),  # not an array
        msgpack.packb([1, 1.0, "x", None, {}]) + b"trailing",
    ],
    ids=["empty", "reserved-byte", "truncated", "four-fields", "version-2", "map", "trailing-bytes"],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_body(body)


def test_malformed_event_is_a_value_error() -> None:
    assert issubclass(MalformedEvent, ValueError)


@pytest.mark.parametrize(
    "frames",
    [
        [b"a", stamp(1, 1)],
        [b"a", stamp(1, 1), encode_body(None, source="x", session_id=None), b"extra"],
        [b"a", b"short", encode_body(None, source="x", session_id=None)],
        [b"\xff\xfe", stamp(1, 1), encode_body(None, source="x", session_id=None)],
        [b"a", stamp(1, 1), b"garbage"],
        [b"a", stamp(1, 1) + b"\x00\x00\x00\x01", b"x"],
        [b"a", stamp(1, 1) + b"\x00\x00\x00\x01\x00\x00", b"xy"],
        [b"a", run_stamp(1, 1, [1, 1]), b"xyz"],
        [b"a", run_stamp(1, 1, [1, 1]), b"xy"],
    ],
    ids=[
        "two-frames",
        "four-frames",
        "short-stamp",
        "non-utf8-topic",
        "garbage-body",
        "run-of-one",
        "ragged-run-stamp",
        "run-lengths-short",
        "run-of-garbage",
    ],
)
def test_malformed_deliveries_raise(frames: list[bytes]) -> None:
    with pytest.raises(MalformedEvent):
        decode_deliver(frames)


# -- production agrees with the codec ---------------------------------------------------------
# The SDK's hot paths inline the codec for speed; these pin them to it.

from sdk.core.decoding import EventDecoder, event_of, event_of_row  # noqa: E402
from sdk.core.recovering import RecoveringDecoder  # noqa: E402


def _deliveries() -> list[list[bytes]]:
    bodies = [
        encode_body(
            p,
            source="src",
            session_id=("s" if i % 2 else None),
            ts=float(i),
            identity=(0xFEED << 48, i | (WANT_VERSION if i == 3 else 0)) if i % 2 else None,
        )
        for i, p in enumerate(PAYLOADS)
    ]
    run_bodies = bodies[:4]  # anonymous and identified mixed in one run
    return [
        [b"t:one", stamp(1, 1), bodies[4]],
        [b"t:run", run_stamp(2, 1, [len(b) for b in run_bodies]), b"".join(run_bodies)],
        [b"t:one", stamp(6, 2), bodies[5]],
    ]


def _uncommitted() -> RecoveringDecoder:
    """A recover decoder under a broker without an event log: it delivers events as they come."""
    decoder = RecoveringDecoder(("t:*",), timeout=1.0)
    decoder.durable = None
    return decoder


@pytest.mark.parametrize("decoder", [EventDecoder(("t:*",), "count"), _uncommitted()], ids=type)
def test_the_sdk_decoders_agree_with_decode_deliver(decoder: EventDecoder) -> None:
    got: list[object] = []
    expected: list[object] = []
    for frames in _deliveries():
        decoder.feed(*frames, got.append)
        assert decoder.held is None
        expected.extend(event_of(envelope) for envelope in decode_deliver(frames))
    assert got == expected
    assert [e.version for e in got] == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]
    assert [e.seq for e in got] == [e.topic_seq for e in got] == [1, 1, 2, 3, 4, 2]  # type: ignore[attr-defined]
    pid = 0xFEED << 48
    assert [e.publisher for e in got] == [None, None, (pid, 1), None, (pid, 3), (pid, 5)]  # type: ignore[attr-defined]


def test_an_identified_body_ends_with_its_identity() -> None:
    """PROTOCOL.md §4.1: 0x97, the anonymous body's fields, then two msgpack uint64s, always the
    last 18 bytes, whatever their values; every reader takes both forms."""
    anonymous = encode_body({"k": 1}, source="src", session_id="s-1", ts=2.0)
    for pid, number in ((1, 1), ((1 << 64) - 1, 5 | WANT_VERSION), (0xABC, (1 << 63) - 1)):
        body = encode_body({"k": 1}, source="src", session_id="s-1", ts=2.0, identity=(pid, number))
        assert body[:1] == IDENTIFIED_MARK == b"\x97"
        assert body[1:-18] == anonymous[1:]
        assert struct.unpack_from("!xQxQ", body, len(body) - 18) == (pid, number)
        assert body[-18] == body[-9] == 0xCF
        assert msgpack.unpackb(body, raw=False)[5:] == [pid, number]
        assert decode_body(body) == decode_body(anonymous)
        assert publisher_of(body) == (pid, number & ~WANT_VERSION)
        assert decode_header(body) == decode_header(anonymous)
    assert publisher_of(anonymous) is None
    assert publisher_of(b"\x97" + anonymous[1:]) is None  # too short / no uint64 markers


def test_a_recover_decoder_delivers_what_the_durable_mark_covers() -> None:
    """Read-committed (PROTOCOL.md §9): live events wait for the broker's durable mark; a mark
    releases those it covers, in order; an empty mark (no log acks) releases the rest."""
    decoder = RecoveringDecoder(("t:*",), timeout=1.0)
    got: list[object] = []

    def mark(body: bytes) -> None:
        decoder.feed(DURABLE, stamp(0, 0), body, got.append)
        while decoder.busy:
            for _step in decoder.resolve(got.append):
                raise AssertionError("a release needs no I/O")

    for frames in _deliveries():
        decoder.feed(*frames, got.append)
    assert (got, decoder.busy) == ([], False)
    mark(DURABLE_MARK.pack(3))
    assert [e.version for e in got] == [1, 2, 3]  # type: ignore[attr-defined]
    mark(DURABLE_MARK.pack(3))
    assert len(got) == 3
    mark(b"")
    assert [e.version for e in got] == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]
    assert decoder.last_version == 6 and not decoder.waiting


def test_log_rows_decode_as_deliveries() -> None:
    body = encode_body({"k": 1}, source="src", session_id="s-1", ts=3.0)
    assert event_of_row([7, 2, "t:x", body]) == event_of(decode_deliver([b"t:x", stamp(7, 2), body])[0])


def test_the_event_logs_header_parse_agrees_with_decode_body() -> None:
    from schemas.envelope import HEADER_PARSE_FROM

    for payload in ("x" * HEADER_PARSE_FROM, None):  # parsed by hand, then fully decoded
        for session_id in ("s-1", None, "ü" * 40):
            body = encode_body(payload, source="a" * 300, session_id=session_id, ts=2.5)
            assert decode_header(body) == decode_body(body)[:3]
    with pytest.raises(MalformedEvent):
        decode_header(b"\x93\x01\x02\x03")
    with pytest.raises(MalformedEvent):
        decode_header(b"\x96\x01\x02\x03\x04\x05\x06")


def test_publish_and_the_session_service_encode_with_the_codec() -> None:
    from sdk.wire import encode_body as publish_body

    packb = msgpack.Packer(use_bin_type=True).pack
    ts, source, session_id, payload = decode_body(publish_body(packb, "src", "s-1", {"a": [1]}, 1 << 20))
    assert (source, session_id, payload) == ("src", "s-1", {"a": [1]})


def test_bus_publish_inlines_the_codec(bus) -> None:  # type: ignore[no-untyped-def]
    """Bus.publish encodes the body itself (one call less per event): a subscriber's frames decode
    with the codec to what was published."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    try:
        sock.connect(bus.endpoints.subscribe)
        sock.subscribe(b"codec:")
        with bus.subscribe("codec:*") as sub:  # live at the broker, so the raw socket's filter is too
            for n in range(100):
                bus.publish("codec:check", {"n": n}, session_id="s-9")
                if sock.poll(100):
                    break
            else:
                pytest.fail("the raw subscriber got nothing")
            frames = sock.recv_multipart()
            (envelope,) = decode_deliver(frames)
            assert (envelope.type, envelope.source, envelope.session_id) == ("codec:check", bus.name, "s-9")
            assert envelope.payload in [{"n": i} for i in range(n + 1)]
            assert sub.recv(timeout=5).payload == {"n": 0}
    finally:
        sock.close()
        ctx.term()


@pytest.mark.parametrize("size", [64, 4096], ids=["unpacker", "slices"])
def test_a_run_with_malformed_bodies_delivers_the_others_exactly(size: int) -> None:
    """Small bodies are decoded by one streaming unpacker, big ones (SLICE_FROM) slice by slice:
    either way a body that does not end exactly at its length, or is not an envelope, is counted
    alone and the run's other events keep their versions and sequences."""
    good = [encode_body({"b": bytes([i]) * size}, source="s", session_id=None, ts=float(i)) for i in range(5)]
    bodies = [good[0], good[1] + b"\xc0", b"\x93\x01\x02\x03", good[3], good[4]]
    decoder = EventDecoder(("t:*",), "count")
    got: list[Event] = []
    decoder.feed(b"t:x", run_stamp(10, 1, [len(b) for b in bodies]), b"".join(bodies), got.append)
    assert [(e.version, e.seq, e.payload["b"][:1]) for e in got] == [(10, 1, b"\x00"), (13, 4, b"\x03"), (14, 5, b"\x04")]
    assert (decoder.malformed, decoder.received, decoder.last_topic_seq[b"t:x"]) == (2, 3, 5)
