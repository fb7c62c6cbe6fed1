"""The rules of the wire that both SDK fronts and the servers' own publishers follow (public).

Type and pattern checks, payload validation, body encoding with the size check, the publisher
socket's options, reading the broker's (un)subscriptions on a publisher, and the errors both buses
raise. Neither bus duplicates these rules; the session service's publisher uses them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from schemas.catalogue import SchemaError, validate as validate_payload
from schemas.envelope import DEFAULT_MAX_EVENT_SIZE
from schemas.envelope import encode_body as codec_encode_body
from schemas.topics import MAX_PATTERNS, InvalidType, check_pattern, check_type
from sdk.errors import BusUnavailable, InvalidEvent, MessageTooLarge, PublishTimeout, not_unicode
from sdk.core.decoding import POLICIES

_TOPIC_CACHE_LIMIT = 10_000


def topic_of(event_type: str, cache: dict[str, bytes]) -> bytes:
    """The topic frame for ``event_type``, checked once and cached.

    Raises:
        InvalidEvent: the type does not follow the grammar in ``schemas.topics``.
    """
    try:
        topic = cache.get(event_type)
    except TypeError:  # unhashable, so not a str: check_type refuses it below
        topic, cache = None, {}
    if topic is None:
        try:
            topic = check_type(event_type).encode("utf-8")
        except InvalidType as e:
            raise InvalidEvent(str(e)) from None
        if len(cache) < _TOPIC_CACHE_LIMIT:
            cache[event_type] = topic
    return topic


def check_event(event_type: str, payload: Any, session_id: str | None, *, validate: bool) -> None:
    """The checks besides the type: ``session_id`` is a str or None, and (if asked) the catalogue.

    Raises:
        InvalidEvent: a bad ``session_id``, or a payload that does not match the catalogue.
    """
    if session_id is not None and not isinstance(session_id, str):
        raise InvalidEvent(f"session_id must be a str, not {type(session_id).__name__}")
    if validate:
        try:
            validate_payload(event_type, payload)
        except SchemaError as e:
            raise InvalidEvent(str(e)) from None


def encode_body(
    packb: Callable[[Any], bytes], source: str, session_id: str | None, payload: Any, limit: int
) -> bytes:
    """The body frame of one event, refused before sending if it is over the broker's ``limit``.

    Raises:
        InvalidEvent: msgpack cannot encode the payload (or the source or session id).
        MessageTooLarge: the encoded body is over ``limit`` bytes (DESIGN.md §4.4).
    """
    try:
        body = codec_encode_body(payload, source=source, session_id=session_id, packb=packb)
    except (TypeError, ValueError, OverflowError) as e:
        raise unencodable(e, source, session_id) from None
    if len(body) > limit:
        raise MessageTooLarge(len(body), limit)
    return body


def unencodable(error: Exception, source: Any, session_id: Any) -> InvalidEvent:
    """Why an event could not be encoded: its source or session id when one is text that is not
    Unicode (a non-UTF-8 command-line argument), else its payload."""
    for field, text in (("source", source), ("session_id", session_id)):
        refused = not_unicode(f"{field} {text!r}", text)
        if refused is not None:
            return refused
    return InvalidEvent(f"payload cannot be encoded with msgpack: {error}")


_MAX_HWM = 2**31 - 1


def check_subscription(
    patterns: tuple[Any, ...], policy: str, *, hwm: int | None = None, since: int | None = None
) -> tuple[str, ...]:
    """The validated patterns of a subscription (its ``hwm`` and ``since`` checked too, if given).

    Raises:
        InvalidEvent: an invalid pattern, policy, high-water mark or version.
    """
    if len(patterns) > MAX_PATTERNS:
        raise InvalidEvent(f"a subscription takes at most {MAX_PATTERNS} patterns, not {len(patterns)}")
    try:
        checked = tuple(check_pattern(p) for p in patterns)
    except InvalidType as e:
        raise InvalidEvent(str(e)) from None
    if policy not in POLICIES:
        raise InvalidEvent(f"policy must be one of {', '.join(map(repr, POLICIES))}, not {policy!r}")
    if hwm is not None and (type(hwm) is not int or not 0 <= hwm <= _MAX_HWM):
        raise InvalidEvent(f"hwm must be a whole number from 0 to {_MAX_HWM}, not {hwm!r}")
    if since is not None and (type(since) is not int or since < 0):
        raise InvalidEvent(f"since must be a version (a whole number >= 0), not {since!r}")
    return checked


def configure_publisher(sock: zmq.Socket, *, timeout: float, publish_timeout: float, hwm: int) -> None:
    """Options of the publisher socket (an XPUB, so it can see the broker's subscription).

    With XPUB_NODROP a full queue makes a send block (then time out after ``publish_timeout``)
    instead of dropping the event; the linger lets queued events reach the broker on close.
    XPUB_VERBOSE passes on every subscription a broker sends, repeats included: a connection that
    reconnects keeps its pipe, so without it a restarted broker's subscription would not be seen
    and the publisher could not tell that it must ask the new broker for its event size limit.
    It keeps the context's ZMTP heartbeats (unlike the sockets that receive events, see
    ``sdk/transport.py``): it only ever receives subscriptions, so its queue never fills, and the
    heartbeat is what ends a connection whose peer has gone while events are still being sent to it.
    """
    sock.linger = int(timeout * 1000)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    sock.sndhwm = hwm
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.sndtimeo = int(publish_timeout * 1000)


SIZE_QUESTION = {"op": "ping"}
"""The control request whose reply names the broker's ``max_event_size`` (PROTOCOL.md §8)."""


def size_limit(reply: dict[str, Any]) -> int:
    """The event size limit in a broker's ``ping`` reply (the default where it names none)."""
    return int(reply.get("max_event_size") or DEFAULT_MAX_EVENT_SIZE)


def broker_subscribed(sock: zmq.Socket) -> bool:
    """Read every pending (un)subscription on a publisher's XPUB; the newest says whether the broker
    is there (``\x01``: subscribed, ``\x00``: withdrawn). With none pending, nothing changed: True."""
    last = b"\x01"
    while True:
        try:
            message = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return last[:1] == b"\x01"
        if message[:1] != b"\x02":  # a confirmation (PROTOCOL.md §4.1) says nothing of that
            last = message


def pending_messages(sock: zmq.Socket) -> list[bytes]:
    """Every message pending on a publisher's XPUB (the broker's (un)subscriptions, confirmations),
    read without waiting."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            return messages


def publisher_unavailable(endpoint: str, timeout: float) -> BusUnavailable:
    """The error when the broker's subscription never reached the publisher (trap §4.1)."""
    return BusUnavailable(
        f"the broker at {endpoint} did not accept the publisher within {timeout:g}s (is it running?)"
    )


def publish_timed_out(publish_timeout: float) -> PublishTimeout:
    """The error when the broker stayed behind for the whole publish timeout."""
    return PublishTimeout(f"the broker stayed behind for {publish_timeout:g}s; event not sent")

