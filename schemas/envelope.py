"""The event envelope and its frames on the wire: pure encode/decode functions, no sockets.

Publish (publisher -> broker ``in``), exactly 2 frames::

    [0] topic  UTF-8 event type, e.g. b"channel:message"
    [1] body   msgpack array [ENVELOPE_VERSION, ts, source, session_id, payload]
               or, identified (PROTOCOL.md §4.1), [..., payload, publisher_id, number]

Deliver (broker ``out`` -> subscriber), exactly 3 frames::

    [0] topic  as published
    [1] stamp  16 bytes, STAMP = struct "!QQ": (version, topic_seq)
    [2] body   as published, byte for byte

or, for a *run* of n >= 2 consecutive events of one topic that the broker had in hand at once::

    [0] topic  as published
    [1] stamp  16 + 4n bytes: STAMP of the first event, then n lengths (struct "!I" each)
    [2] body   the n bodies, byte for byte, one after the other

Event i of a run (from 0) has version + i and topic_seq + i; its body is the next length bytes.

An *identified* body (PROTOCOL.md §4.1) has 7 elements, the publisher's identity last, each of
the two encoded as a msgpack uint64 so that they are always the body's last 18 bytes (IDENTITY).

A *batch* (PROTOCOL.md §4.2) publishes a run of events of one type as one message, 3 frames::

    [0] topic    BATCH_PREFIX + the UTF-8 event type
    [1] lengths  n >= 1 body lengths (struct "!I" each), n <= MAX_BATCH_EVENTS
    [2] bodies   the n bodies, each an ordinary body, one after the other

The broker stamps it with n consecutive versions and topic sequences and delivers it as a run
(n >= 2) or a single event (n = 1): subscribers see no difference from events published one by one.

Confirmations (broker -> publishers, upstream) and the event log's acks (log -> broker, upstream)
are one frame each, starting with CONFIRM; see ``pack_confirm`` and ``LOG_ACK``.

``schemas/PROTOCOL.md`` is the full description; this module is its executable form.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

ENVELOPE_VERSION = 1
"""Version of the body layout; bumped on any incompatible change."""

STAMP = struct.Struct("!QQ")
"""The broker's stamp frame: global version, then the per-topic sequence (both from 1)."""

RUN_LENGTH = struct.Struct("!I")
"""One body length in the stamp of a run."""

MAX_RUN = 128
"""Most events the broker puts in one delivered message (a run); 1 turns runs off."""

MAX_RUN_BYTES = 64 * 1024
"""Most body bytes in one run the broker gathers; a bigger body travels alone (and the broker
gathers less within a bounded message size: broker/bus/split.py)."""

BATCH_PREFIX = b"\x03"
"""First byte of a batch's topic frame (no event type starts with it)."""

BATCH_IDENTITY = struct.Struct("!QQ")
"""A batch's optional fourth frame: publisher id and the first event's number (PROTOCOL.md §4.2)."""

MAX_BATCH_EVENTS = 4096
"""Most events in one batch; the broker refuses a batch with more."""

BATCH_BYTES = 128 * 1024
"""Body bytes the SDK puts in one batch at most (and never more than the broker's event size limit)."""

BODY_MARK = b"\x95"
"""First byte of an anonymous body: the msgpack header of a 5-element array."""

IDENTIFIED_MARK = b"\x97"
"""First byte of an identified body: the msgpack header of a 7-element array."""

DEFAULT_MAX_EVENT_SIZE = 1024 * 1024
"""Largest encoded body the broker accepts by default, in bytes."""

CONTROL_PREFIX = b"\x00"
"""Topics starting with NUL are the broker's control messages, never events."""

LOG_MARK = b"\x00log"
"""The event log subscribes to this (besides everything): a broker started with ``await_log`` keeps
publishers waiting until it sees it, so the log misses nothing a subscriber gets."""

SYNC_PREFIX = b"\x00sync:"
"""A subscriber subscribes to SYNC_PREFIX + token; the broker answers on that topic, proving
that every subscription sent before it on the same connection is live."""


IDENTITY = struct.Struct("!BQBQ")
"""The last 18 bytes of an identified body: (0xcf, publisher id, 0xcf, number | WANT_VERSION), the
two msgpack uint64s ending the 7-element array. The publisher id is random and non-zero; numbers
start at 1 and stay below 2^63."""

IDENTITY_RAW = struct.Struct("!B8sBQ")
"""IDENTITY with the publisher id as its 8 raw bytes (the broker's dict key, never decoded)."""

UINT64 = 0xCF
"""The msgpack type byte of a uint64: IDENTITY's two markers."""

WANT_VERSION = 1 << 63
"""Set in a number: the publisher wants this event's version in its confirmation."""

NUMBER_MASK = WANT_VERSION - 1
"""A number without WANT_VERSION."""


def identity_tail(publisher_id: int, number: int) -> bytes:
    """The 18 bytes that end an identified body (``number`` may carry WANT_VERSION)."""
    return IDENTITY.pack(UINT64, publisher_id, UINT64, number)


def identify(body: bytes, publisher_id: int, number: int) -> bytes:
    """An anonymous (5-element) body made identified (7 elements): same fields, identity last."""
    if body[:1] != BODY_MARK:
        raise ValueError("not an anonymous body (0x95)")
    return IDENTIFIED_MARK + body[1:] + identity_tail(publisher_id, number)


def publisher_of(body: bytes) -> tuple[int, int] | None:
    """``(publisher id, number)`` of an identified body (number without WANT_VERSION), else None.
    Reads the last 18 bytes only, as the broker does."""
    if body[:1] != IDENTIFIED_MARK or len(body) < IDENTITY.size + 1:
        return None
    m1, pid, m2, number = IDENTITY.unpack_from(body, len(body) - IDENTITY.size)
    if m1 != UINT64 or m2 != UINT64:
        return None
    return pid, number & NUMBER_MASK


CONFIRM = b"\x02"
"""First byte of an upstream user message (neither an (un)subscription, 0x00/0x01, nor a frame
libzmq would take for one): a confirmation to publishers, or the event log's ack to the broker."""

CONFIRM_ENTRY = struct.Struct("!QQH")
"""A confirmation entry's head: publisher id, confirmed-through number, count of version pairs."""

CONFIRM_PAIR = struct.Struct("!QQ")
"""A (number, version) pair in a confirmation entry: a WANT_VERSION event's stamped version."""

CONFIRM_MAX_BYTES = 64 * 1024
"""A confirmation message is split before it grows past this many bytes."""

LOG_ACK = struct.Struct("!cQ")
"""The event log's ack, upstream on its data connection: (CONFIRM, durable-through version)."""

LOG_IDS = LOG_MARK + b".ids"
"""Topic of the broker's message to the log naming the publisher of each identified event in the
events that follow it (stamp version 0; body: LOG_ID entries)."""

LOG_ID = struct.Struct("!QQQ")
"""One entry of a LOG_IDS body: version, publisher id, number (without WANT_VERSION)."""

LOG_RESEND = LOG_MARK + b":"
"""Prefix of the topic of an event the broker sends the log again (after the log reconnected);
its stamp frame is RESEND_STAMP_PAD followed by the original stamp, so it reads as version 0."""

RESEND_STAMP_PAD = bytes(8)

DURABLE = CONTROL_PREFIX + b"durable"
"""Topic of the broker's durable mark (stamp version 0): its body is DURABLE_MARK, the version
through which the event log has every event on disk, or empty while no event log acks (nothing is
held back for one). Sent after each of the log's acks, so it follows every event it covers."""

DURABLE_MARK = struct.Struct("!Q")


def confirm_entry(publisher: int, through: int, pairs: list[tuple[int, int]]) -> bytes:
    """One publisher's entry in a confirmation: ``through`` and the versions of flagged events."""
    head = CONFIRM_ENTRY.pack(publisher, through, len(pairs))
    if not pairs:
        return head
    return head + b"".join(CONFIRM_PAIR.pack(n, v) for n, v in pairs)


def parse_confirm(message: bytes) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """``(publisher id, confirmed-through number, [(number, version), ...])`` of each entry of a
    confirmation message (its CONFIRM byte included).

    Raises:
        MalformedEvent: the message does not follow the layout.
    """
    if message[:1] != CONFIRM:
        raise MalformedEvent("a confirmation starts with 0x02")
    entries, pos, size = [], 1, len(message)
    while pos < size:
        if pos + CONFIRM_ENTRY.size > size:
            raise MalformedEvent("a confirmation entry is cut short")
        publisher, through, n = CONFIRM_ENTRY.unpack_from(message, pos)
        pos += CONFIRM_ENTRY.size
        end = pos + n * CONFIRM_PAIR.size
        if end > size:
            raise MalformedEvent("a confirmation entry's pairs are cut short")
        pairs = [CONFIRM_PAIR.unpack_from(message, p) for p in range(pos, end, CONFIRM_PAIR.size)]
        entries.append((publisher, through, pairs))
        pos = end
    return entries


class MalformedEvent(ValueError):
    """Frames that do not follow the envelope layout."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded event as it travels: what the SDK turns into ``sdk.Event``."""

    type: str
    payload: Any
    version: int
    topic_seq: int
    ts: float
    source: str
    session_id: str | None
    publisher: tuple[int, int] | None = None


_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode_body(
    payload: Any,
    *,
    source: str,
    session_id: str | None,
    ts: float | None = None,
    packb: Callable[[Any], bytes] = _packb,
    identity: tuple[int, int] | None = None,
) -> bytes:
    """Encode the body frame of a publish (``ts`` defaults to now); with ``identity``
    ``(publisher id, number)`` an identified one (7 elements, PROTOCOL.md §4.1).

    ``packb`` is a ``msgpack.Packer(use_bin_type=True).pack`` of the caller's own: a Packer is not
    thread-safe, so a publisher that sends from several threads passes one it guards.

    Raises:
        TypeError, ValueError, OverflowError: msgpack cannot carry the payload (or source, session id).
    """
    body = packb((ENVELOPE_VERSION, time.time() if ts is None else ts, source, session_id, payload))
    return body if identity is None else identify(body, *identity)


def encode_publish(
    event_type: str, payload: Any, *, source: str, session_id: str | None = None, ts: float | None = None
) -> list[bytes]:
    """The two frames a publisher sends for one event."""
    return [event_type.encode("utf-8"), encode_body(payload, source=source, session_id=session_id, ts=ts)]


def decode_body(body: bytes) -> tuple[float, str, str | None, Any]:
    """Decode a body frame, anonymous (5 elements) or identified (7), into ``(ts, source,
    session_id, payload)``; raises MalformedEvent. (``publisher_of`` reads the identity.)"""
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise MalformedEvent(f"body is not valid msgpack: {e}") from e
    if not isinstance(fields, list) or len(fields) not in (5, 7) or fields[0] != ENVELOPE_VERSION:
        raise MalformedEvent(
            "body is not a version-1 envelope [1, ts, source, session_id, payload(, publisher_id, number)]"
        )
    return fields[1], fields[2], fields[3], fields[4]


HEADER_PARSE_FROM = 512
"""Bodies this long or longer have their header parsed by hand (payload left undecoded)."""
FLOAT64 = struct.Struct(">d")
"""A msgpack float64's 8 bytes after its 0xcb (an envelope's ts is one, at byte 3)."""


def _str_at(body: bytes, pos: int) -> tuple[str | None, int]:
    """A msgpack str or nil at ``pos``: (value, next position); raises ValueError otherwise."""
    head = body[pos]
    if 0xA0 <= head <= 0xBF:
        n, pos = head & 0x1F, pos + 1
    elif head == 0xC0:
        return None, pos + 1
    elif head == 0xD9:
        n, pos = body[pos + 1], pos + 2
    elif head == 0xDA:
        n, pos = int.from_bytes(body[pos + 1 : pos + 3], "big"), pos + 3
    else:
        raise ValueError("not a str")
    return body[pos : pos + n].decode("utf-8"), pos + n


SESSION_PREFIX = b"\x00@"
"""The topic of a session stream's copy of an event (PROTOCOL.md §5.1) starts with this, then the
session key, a NUL and the event type; its stamp is RESEND_STAMP_PAD and then the stamp of §5."""

SESSION_KEY_BYTES = 100
"""A session id of at most this many UTF-8 bytes, with no NUL, is its own key (after ``=``); a
longer one is keyed by its hash (``#`` and 32 hex digits), so a subscription stays under 246 bytes."""

_INTS_AFTER = {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9, 0xCA: 5, 0xCB: 9}


def session_key(session_id: bytes) -> bytes:
    """The key of a session in stream topics: ``=`` + the id, or ``#`` + a hash of a long one."""
    if len(session_id) <= SESSION_KEY_BYTES and b"\x00" not in session_id:
        return b"=" + session_id
    import hashlib

    return b"#" + hashlib.blake2b(session_id, digest_size=16).hexdigest().encode()


def session_head(session_id: str) -> bytes:
    """What every stream topic of this session starts with: SESSION_PREFIX, its key and a NUL."""
    return SESSION_PREFIX + session_key(session_id.encode("utf-8")) + b"\x00"


def session_of(body: bytes | memoryview) -> bytes | None:
    """The session id of an envelope (5 or 7 elements), as UTF-8 bytes, read without decoding the
    body: None for nil or a body not in the envelope's shape."""
    try:
        head = body[2]
        if head < 0x80 or head >= 0xE0:  # a fixint ts
            pos = 3
        else:
            pos = 2 + _INTS_AFTER[head]
        head = body[pos]
        if 0xA0 <= head <= 0xBF:
            pos += 1 + (head & 0x1F)
        elif head == 0xD9:
            pos += 2 + body[pos + 1]
        elif head == 0xDA:
            pos += 3 + int.from_bytes(body[pos + 1 : pos + 3], "big")
        else:
            return None
        head = body[pos]
        if 0xA0 <= head <= 0xBF:
            n, pos = head & 0x1F, pos + 1
        elif head == 0xD9:
            n, pos = body[pos + 1], pos + 2
        elif head == 0xDA:
            n, pos = int.from_bytes(body[pos + 1 : pos + 3], "big"), pos + 3
        else:
            return None
        return bytes(body[pos : pos + n])
    except (IndexError, KeyError):
        return None


def header_fields(body: bytes) -> tuple[float, str, str | None, int] | None:
    """``(ts, source, session_id, end)`` of a body in the SDK's shape (an array of 5 or 7, version
    1, a float64 ts, the source, the session id), read by hand up to ``end``, where its header
    ends; None for a body in another shape."""
    try:
        if body[0] in (0x95, 0x97) and body[1] == ENVELOPE_VERSION and body[2] == 0xCB:
            source, pos = _str_at(body, 11)
            session_id, end = _str_at(body, pos)
            if source is not None:
                return FLOAT64.unpack_from(body, 3)[0], source, session_id, end
    except (IndexError, ValueError, UnicodeDecodeError):
        pass
    return None


def decode_header(body: bytes) -> tuple[float, str, str | None]:
    """``(ts, source, session_id)`` of a body without decoding its payload (what the event log keeps).

    The SDK always writes ``[1, float64 ts, str source, str|nil session_id, payload]``; a long body
    in that shape is read by hand up to the session id, anything else fully decoded.

    Raises:
        MalformedEvent: the body is not an envelope.
    """
    if len(body) >= HEADER_PARSE_FROM:  # msgpack's C decoder is faster on small bodies
        fields = header_fields(body)
        if fields is not None:
            return fields[0], fields[1], fields[2]
    ts, source, session_id, _payload = decode_body(body)
    try:
        when = float(ts)
    except TypeError:  # nil, an array, a map: float() raises TypeError, not ValueError
        raise MalformedEvent(f"the ts is not a number: {type(ts).__name__}") from None
    return when, str(source), session_id if isinstance(session_id, str) else None


def stamp(version: int, topic_seq: int) -> bytes:
    """The stamp frame the broker adds."""
    return STAMP.pack(version, topic_seq)


_RUN_STAMPS = [struct.Struct(f"!QQ{n}I") for n in range(MAX_RUN + 1)]


def run_stamp(version: int, topic_seq: int, lengths: list[int]) -> bytes:
    """The stamp frame of a run: the first event's stamp, then every body's length."""
    n = len(lengths)
    packer = _RUN_STAMPS[n] if n <= MAX_RUN else struct.Struct(f"!QQ{n}I")
    return packer.pack(version, topic_seq, *lengths)


def encode_batch(event_type: str, bodies: list[bytes]) -> list[bytes]:
    """The three frames of a batch of ``bodies`` (encoded bodies of one type, 1 to MAX_BATCH_EVENTS)."""
    n = len(bodies)
    if not 1 <= n <= MAX_BATCH_EVENTS:
        raise ValueError(f"a batch has 1 to {MAX_BATCH_EVENTS} events, not {n}")
    lengths = struct.pack(f"!{n}I", *map(len, bodies))
    return [BATCH_PREFIX + event_type.encode("utf-8"), lengths, b"".join(bodies)]


def split_batch(lengths: bytes, bodies: bytes) -> list[bytes]:
    """The bodies in a batch's frames 1 and 2 (PROTOCOL.md §4.2); what each holds is not checked.

    Raises:
        MalformedEvent: the lengths are not whole, 0, too many, or do not add up to ``bodies``.
    """
    n, rest = divmod(len(lengths), RUN_LENGTH.size)
    if rest or not 0 < n <= MAX_BATCH_EVENTS:
        raise MalformedEvent(f"a batch has 1 to {MAX_BATCH_EVENTS} lengths of 4 bytes, not {len(lengths)} bytes")
    sizes = struct.unpack(f"!{n}I", lengths)
    if sum(sizes) != len(bodies) or not min(sizes):
        raise MalformedEvent("a batch's lengths must be non-zero and add up to its bodies")
    out, start, view = [], 0, memoryview(bodies)
    for size in sizes:
        out.append(bytes(view[start : start + size]))
        start += size
    return out


def split_run(stamp_frame: bytes, body: bytes) -> list[tuple[int, int, bytes]]:
    """``(version, topic_seq, body)`` of every event in a delivered message, single or run (none
    for a longer stamp whose version is 0: an event re-sent to the log, PROTOCOL.md "Event log").

    Raises:
        MalformedEvent: the stamp has a wrong size, or the lengths do not add up to the body.
    """
    size = len(stamp_frame)
    if size == STAMP.size:
        version, topic_seq = STAMP.unpack(stamp_frame)
        return [(version, topic_seq, body)]
    if stamp_frame[: len(RESEND_STAMP_PAD)] == RESEND_STAMP_PAD:  # version 0: for the log only
        return []
    n, rest = divmod(size - STAMP.size, RUN_LENGTH.size)
    if size < STAMP.size or rest or n < 2:
        raise MalformedEvent(f"stamp frame must be 16 + 4n bytes (n >= 2), got {size}")
    version, topic_seq, *lengths = struct.unpack(f"!QQ{n}I", stamp_frame)
    if sum(lengths) != len(body):
        raise MalformedEvent(f"run lengths add up to {sum(lengths)} bytes, the body has {len(body)}")
    events, start, view = [], 0, memoryview(body)
    for i, length in enumerate(lengths):
        events.append((version + i, topic_seq + i, bytes(view[start : start + length])))
        start += length
    return events


def decode_row(row: list[Any]) -> Envelope:
    """Decode one event log row ``[version, topic_seq, type, body]`` (a ``replay`` or ``tail`` reply).

    Raises:
        MalformedEvent: the row or its body does not follow the layout.
    """
    try:
        version, topic_seq, event_type, body = row
    except (TypeError, ValueError) as e:
        raise MalformedEvent("a log row is [version, topic_seq, type, body]") from e
    ts, source, session_id, payload = decode_body(body)
    return Envelope(event_type, payload, version, topic_seq, ts, source, session_id, publisher_of(body))


def decode_deliver(frames: list[bytes]) -> list[Envelope]:
    """Decode the three frames a subscriber receives (one event, or a run); raises MalformedEvent."""
    if len(frames) != 3:
        raise MalformedEvent(f"expected 3 frames, got {len(frames)}")
    topic, stamp_frame, body = frames
    try:
        event_type = topic.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedEvent("topic is not UTF-8") from e
    envelopes = []
    for version, topic_seq, one in split_run(stamp_frame, body):
        ts, source, session_id, payload = decode_body(one)
        envelopes.append(
            Envelope(event_type, payload, version, topic_seq, ts, source, session_id, publisher_of(one))
        )
    return envelopes
