"""The backbone's names and message layout: one JetStream stream per bus, its subject, the key-value
bucket of per-topic sequence checkpoints, and how an event is packed into a stream message."""

from __future__ import annotations

import re
import struct

from schemas.envelope import WANT_VERSION

STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A stream name the edge accepts: also valid in a subject and in a key-value bucket name."""
DEFAULT_STREAM = "PRYXBUS"

IDENTIFIED_MARK = 0x97
"""An identified body (the identity contract): a msgpack array of 7, ending with two uint64s."""
_TAIL = struct.Struct("!xQxQ")
"""The identified body's last 18 bytes: 0xcf + publisher id, 0xcf + number."""
MSG_ID = "Nats-Msg-Id"
HEARTBEAT = 1.0
"""Seconds between the idle heartbeats of the ordered consumers an edge and a session service
read with: nats-py makes such a consumer anew after two missed, so one on a server that died (an
ordered consumer is a single replica) is replaced within 2-3 s, not nats-py's 10-15 s."""


def subject(stream: str) -> str:
    """The one subject the stream holds; the topic travels in the message (:func:`pack`)."""
    return f"pryxbus.{stream}"


def checkpoint_bucket(stream: str) -> str:
    """The key-value bucket where edges checkpoint the per-topic sequences (key :data:`CHECKPOINT_KEY`)."""
    return f"pryxbus-{stream}-seqs"


CHECKPOINT_KEY = "seqs"


def pack(topic: bytes, body: bytes) -> bytes:
    """A stream message: the topic's length (one byte: a topic is at most 255), the topic, the body."""
    return bytes((len(topic),)) + topic + body


def unpack(data: bytes) -> tuple[bytes, bytes]:
    """(topic, body) of a stream message."""
    n = data[0]
    return data[1 : 1 + n], data[1 + n :]


def identity(body: bytes) -> tuple[int, int] | None:
    """(publisher id, number with its want-version bit) of an identified event, from the last 18
    bytes of its 7-element body; None for an anonymous one."""
    if len(body) > 18 and body[0] == IDENTIFIED_MARK and body[-18] == 0xCF and body[-9] == 0xCF:
        return _TAIL.unpack_from(body, len(body) - 18)  # type: ignore[return-value]
    return None


def msg_id(publisher: int, number: int) -> str:
    """The ``Nats-Msg-Id`` of an identified event: JetStream stores each at most once (in its
    duplicate window), so a publisher's resend, or the edge's own retry, is not stored twice."""
    return f"{publisher:016x}:{number & ~WANT_VERSION}"


def msg_id_header(publisher: int, number: int) -> bytes:
    """The NATS header block of an identified event's publish: ``Nats-Msg-Id`` = :func:`msg_id`."""
    return b"NATS/1.0\r\nNats-Msg-Id: %016x:%d\r\n\r\n" % (publisher, number & ~WANT_VERSION)


def stream_sequence(reply: str) -> int:
    """The stream sequence in a JetStream message's reply subject: ``$JS.ACK.STREAM.CONSUMER.
    DELIVERED.SSEQ.DSEQ.TS.PENDING``, or with domain and account hash after ``$JS.ACK`` (12 tokens)."""
    tokens = reply.split(".", 8)
    return int(tokens[5] if len(tokens) == 9 and tokens[8].isdigit() else tokens[7])
