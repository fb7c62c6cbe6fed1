"""The backbone's pure parts: reading JetStream's publish acks and a delivered message's stream
sequence, as the edge does on its hot path without json or nats-py's metadata."""

from __future__ import annotations

import json

import pytest

from broker.backbone.publishing import StreamRefused, parse_ack, retried
from broker.backbone.stream import msg_id, msg_id_header, stream_sequence
from schemas.envelope import WANT_VERSION


@pytest.mark.parametrize("reply, expected", [
    ({"stream": "PRYXBUS", "seq": 1}, (1, False)),
    ({"stream": "PRYXBUS", "seq": 123456789, "duplicate": True}, (123456789, True)),
    ({"stream": "PRYXBUS", "domain": "hub", "seq": 42}, (42, False)),
])
def test_an_ack_gives_its_sequence_and_whether_it_was_a_duplicate(reply, expected) -> None:
    assert parse_ack(json.dumps(reply, separators=(",", ":")).encode()) == expected
    assert parse_ack(json.dumps(reply).encode()) == expected


@pytest.mark.parametrize("ack, expected", [
    (b'{"stream":"S","seq":1}', (1, False)),
    (b'{"stream":"S","seq":1,"duplicate": true}', (1, True)),
])
def test_an_ack_as_nats_server_writes_it(ack, expected) -> None:
    """Byte for byte as nats-server 2.15 answers a first publish and one with the same Msg-Id."""
    assert parse_ack(ack) == expected


def test_an_error_answer_is_refused_with_its_codes_and_only_some_are_retried() -> None:
    answer = {"error": {"code": 503, "err_code": 10077, "description": "JetStream system temporarily unavailable"}}
    with pytest.raises(StreamRefused) as refused:
        parse_ack(json.dumps(answer).encode())
    assert (refused.value.code, refused.value.err_code) == (503, 10077) and retried(refused.value)
    answer = {"error": {"code": 400, "err_code": 10054, "description": "message size exceeds maximum allowed"}}
    with pytest.raises(StreamRefused) as refused:
        parse_ack(json.dumps(answer).encode())
    assert refused.value.code == 400 and not retried(refused.value)
    with pytest.raises(StreamRefused) as refused:
        parse_ack(b"")  # a status message: no responders
    assert retried(refused.value)
    with pytest.raises(StreamRefused):
        parse_ack(b"not json")


def test_the_stream_sequence_comes_from_either_form_of_the_reply_subject() -> None:
    assert stream_sequence("$JS.ACK.PRYXBUS.c1.1.4711.17.1733580000000000000.3") == 4711
    assert stream_sequence("$JS.ACK.hub.ACCHASH.PRYXBUS.c1.1.4711.17.1733580000000000000.3.rnd") == 4711
    assert stream_sequence("$JS.ACK._.ACCHASH.PRYXBUS.c1.1.4711.17.1733580000000000000.3") == 4711


def test_the_msg_id_header_of_a_raw_publish_is_the_msg_id() -> None:
    for publisher, number in [(1, 1), (0xFEDCBA9876543210, 12345 | WANT_VERSION), (1 << 63, (1 << 62) - 1)]:
        assert msg_id_header(publisher, number) == f"NATS/1.0\r\nNats-Msg-Id: {msg_id(publisher, number)}\r\n\r\n".encode()
