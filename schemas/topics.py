"""Event types and subscription patterns: validation and matching, with no sockets involved.

A type is segments joined by ``:``; a segment is letters, digits, ``_``, ``-`` or ``.``.
A pattern is a type in which a segment may be ``*`` (exactly one segment), and whose last
segment may be ``**`` (one or more segments); ``**`` alone matches every type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

MAX_TYPE_LENGTH = 255
"""Longest event type, in UTF-8 bytes."""
MAX_PATTERNS = 10_000
"""Most patterns in one subscription: each is a subscription the broker keeps for that subscriber."""

_SEGMENT = r"[A-Za-z0-9_.\-]+"
_TYPE_RE = re.compile(rf"{_SEGMENT}(?::{_SEGMENT})*")
_PATTERN_SEGMENT_RE = re.compile(rf"{_SEGMENT}|\*|\*\*")


class InvalidType(ValueError):
    """An event type or pattern that does not follow the grammar above."""


def check_type(event_type: object) -> str:
    """Return ``event_type`` if it is a valid event type, else raise :class:`InvalidType`."""
    if not isinstance(event_type, str):
        raise InvalidType(f"event type must be a str, not {type(event_type).__name__}")
    if len(event_type.encode("utf-8", "surrogatepass")) > MAX_TYPE_LENGTH:
        raise InvalidType(f"event type is longer than {MAX_TYPE_LENGTH} bytes")
    if not _TYPE_RE.fullmatch(event_type):
        raise InvalidType(
            f"invalid event type {event_type!r}: use segments of letters, digits, '_', '-' or '.'"
            " joined by ':' (e.g. 'channel:message')"
        )
    return event_type


def is_valid_type(topic: bytes) -> bool:
    """True if the raw topic frame is a valid UTF-8 event type (used by the broker on new topics)."""
    if len(topic) > MAX_TYPE_LENGTH:
        return False
    try:
        return _TYPE_RE.fullmatch(topic.decode("utf-8")) is not None
    except UnicodeDecodeError:
        return False


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise :class:`InvalidType`."""
    if not isinstance(pattern, str):
        raise InvalidType(f"pattern must be a str, not {type(pattern).__name__}")
    segments = pattern.split(":")
    for i, segment in enumerate(segments):
        if not _PATTERN_SEGMENT_RE.fullmatch(segment):
            raise InvalidType(
                f"invalid pattern {pattern!r}: segment {segment!r} is not a name, '*' or '**'"
            )
        if segment == "**" and i != len(segments) - 1:
            raise InvalidType(f"invalid pattern {pattern!r}: '**' may only be the last segment")
    if len(pattern.encode("utf-8")) > MAX_TYPE_LENGTH:
        raise InvalidType(f"pattern is longer than {MAX_TYPE_LENGTH} bytes")
    return pattern


def is_match_all(patterns: Iterable[str]) -> bool:
    """True if the patterns select every event (no pattern, or ``**`` among them)."""
    patterns = list(patterns)
    return not patterns or "**" in patterns


MAX_PREFIX = 246
"""Longest subscription prefix in bytes. ZMTP 3.1 sends a subscription as a SUBSCRIBE command, 10
bytes before the prefix, and the broker drops a subscriber whose subscription exceeds 256 bytes
(1 + MAX_TYPE_LENGTH, its bound on the memory one subscription costs); a longer type is
subscribed by its first MAX_PREFIX bytes and matched precisely on arrival, as every pattern is."""


def zmq_prefix(pattern: str) -> bytes:
    """The ZeroMQ subscription prefix that covers ``pattern`` (a superset: match precisely after)."""
    if pattern == "**":
        return b""
    head = pattern.split("*", 1)[0]
    return head.encode("utf-8")[:MAX_PREFIX]


def _pattern_regex(pattern: str) -> str:
    parts = []
    for segment in pattern.split(":"):
        if segment == "*":
            parts.append(_SEGMENT)
        elif segment == "**":
            parts.append(rf"{_SEGMENT}(?::{_SEGMENT})*")
        else:
            parts.append(re.escape(segment))
    return ":".join(parts)


def compile_matcher(patterns: Iterable[str]) -> Callable[[bytes], bool]:
    """Return a predicate on raw topic bytes: does the topic match any of ``patterns``?

    Exact patterns are checked with one set lookup; wildcard patterns with one regex.
    Control topics (starting with a NUL byte) never match.
    """
    patterns = [check_pattern(p) for p in patterns]
    if is_match_all(patterns):
        return lambda topic: topic[:1] != b"\x00"
    exact = frozenset(p.encode("utf-8") for p in patterns if "*" not in p)
    wild = [p for p in patterns if "*" in p]
    if not wild:
        return exact.__contains__
    regex = re.compile("|".join(f"(?:{_pattern_regex(p)})" for p in wild).encode("utf-8"))
    fullmatch = regex.fullmatch
    if not exact:
        return lambda topic: fullmatch(topic) is not None
    return lambda topic: topic in exact or fullmatch(topic) is not None


EVERY_TYPE = [bytes([c]) for c in sorted(b"-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")]
"""The prefixes that cover every event type and nothing else: a type's first byte is one of these.
Subscribed in place of the empty prefix, they keep the broker's control messages (what it sends the
event log again, session stream copies, ...) out of a subscriber's queue."""


def zmq_prefixes(patterns: Iterable[str]) -> list[bytes]:
    """The minimal set of ZeroMQ prefixes to subscribe to for ``patterns`` (never the empty prefix:
    EVERY_TYPE instead)."""
    patterns = list(patterns)
    if is_match_all(patterns):
        return list(EVERY_TYPE)
    prefixes = sorted({zmq_prefix(p) for p in patterns})
    if prefixes[0] == b"":  # a pattern starting with a wildcard
        return list(EVERY_TYPE)
    kept: list[bytes] = []
    for prefix in prefixes:
        # Sorted, so what a prefix covers follows it at once: only the last one kept can cover this.
        if not (kept and prefix.startswith(kept[-1])):
            kept.append(prefix)
    return kept
