"""The session service's request/reply protocol: ops, fields, limits, error codes (pure, no sockets).

Shared by the service (``broker/sessions``) and the SDK clients (``sdk/sessions.py``), so a request
is validated by the same rules on both sides. The wire format is documented in ``PROTOCOL.md``:

- request: one msgpack map ``{"op": str, ...fields}``;
- reply: ``{"ok": true, "result": ...}`` or ``{"ok": false, "code": str, "message": str}``.

A session travels as a map of four strings: ``id``, ``title``, ``created_at``, ``updated_at``
(timestamps in the fixed-width UTC form ``2025-01-31T12:00:00.000000+00:00``, which sorts as text).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Any

import msgpack

MAX_TITLE_LENGTH = 4096
"""Longest title, in characters (code points). Longer titles are refused with ``too_long``."""
MAX_ID_LENGTH = 256
"""Longest session id, in characters; an id is any non-empty string up to this length."""
MAX_RID_LENGTH = 64
"""Longest request id (``rid``), the key under which the service remembers a write's reply."""
MAX_LIST_LIMIT = 100
"""``list`` never returns more sessions than this per call; a larger ``limit`` is capped."""
MAX_OFFSET = (1 << 63) - 1
"""Largest ``list`` offset (SQLite's largest integer); a larger one is refused with ``bad_request``."""
MAX_REQUEST_SIZE = 1 << 20
"""Largest request frame in bytes. ZeroMQ disconnects a peer that sends more (no reply possible)."""
MAX_REQUEST_ITEMS = 4096
"""Most elements in one msgpack array or map of a request (untrusted input stays bounded)."""
REQUEST_UNPACK_LIMITS = {
    "max_str_len": MAX_REQUEST_SIZE,
    "max_bin_len": MAX_REQUEST_SIZE,
    "max_array_len": MAX_REQUEST_ITEMS,
    "max_map_len": MAX_REQUEST_ITEMS,
}
"""msgpack limits for decoding a request; the frame itself is checked against MAX_REQUEST_SIZE
first (``unpackb`` takes the whole frame, so there is no separate buffer limit)."""

WRITE_OPS = frozenset({"create", "ensure", "rename", "touch", "delete", "restore"})
READ_OPS = frozenset({"get", "list", "ping", "stats"})
OPS = WRITE_OPS | READ_OPS

# Error codes (the ``code`` of an error reply).
BAD_REQUEST = "bad_request"  # not msgpack, not a map, a missing or mistyped field, a bad cursor
UNKNOWN_OP = "unknown_op"  # the op is not one of OPS
TOO_LONG = "too_long"  # a title or id over its limit
NOT_FOUND = "not_found"  # no session has that id
CONFLICT = "conflict"  # create with an id that exists with a different title
BUSY = "busy"  # the database stayed locked by another process; nothing was changed, retry
INTERNAL = "internal"  # an unexpected server error; nothing was changed
STORAGE = "storage"  # the disk refused the write (full, or failing); nothing was changed, retry later
CODES = frozenset({BAD_REQUEST, UNKNOWN_OP, TOO_LONG, NOT_FOUND, CONFLICT, BUSY, INTERNAL, STORAGE})

SESSION_EVENTS = {"created": "session:created", "updated": "session:updated", "deleted": "session:deleted"}


class ProtocolError(ValueError):
    """A request the session service refuses; ``code`` is one of the error codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- field checks (the same rules on both sides) -------------------------------------------------


def check_id(value: Any, field: str = "id") -> str:
    """A session id: a non-empty str of at most MAX_ID_LENGTH characters."""
    if not isinstance(value, str):
        raise ProtocolError(BAD_REQUEST, f"{field!r} must be a string, not {_kind(value)}")
    if not value:
        raise ProtocolError(BAD_REQUEST, f"{field!r} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ProtocolError(TOO_LONG, f"{field!r} is {len(value)} characters; at most {MAX_ID_LENGTH}")
    return _unicode(value, field)


def check_title(value: Any) -> str:
    """A title: any str (empty, NULs and SQL included) of at most MAX_TITLE_LENGTH characters."""
    if not isinstance(value, str):
        raise ProtocolError(BAD_REQUEST, f"'title' must be a string, not {_kind(value)}")
    if len(value) > MAX_TITLE_LENGTH:
        raise ProtocolError(TOO_LONG, f"'title' is {len(value)} characters; at most {MAX_TITLE_LENGTH}")
    return _unicode(value, "title")


def _unicode(value: str, field: str) -> str:
    """``value`` if it can travel as UTF-8: a Python str may hold lone surrogates (e.g. a command-line
    argument that was not valid UTF-8), which no msgpack str can carry."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as e:
            raise ProtocolError(
                BAD_REQUEST, f"{field!r} is not valid Unicode text (a lone surrogate at position {e.start})"
            ) from None
    return value


def check_rid(value: Any) -> str | bytes | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) or not 0 < len(value) <= MAX_RID_LENGTH:
        raise ProtocolError(BAD_REQUEST, f"'rid' must be a string of 1 to {MAX_RID_LENGTH} characters")
    return value


def check_limit(value: Any) -> int:
    """A list limit: an int >= 1, capped at MAX_LIST_LIMIT."""
    if value is None:
        return MAX_LIST_LIMIT
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProtocolError(BAD_REQUEST, "'limit' must be an integer >= 1")
    return min(value, MAX_LIST_LIMIT)


def check_offset(value: Any) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_OFFSET:
        raise ProtocolError(BAD_REQUEST, f"'offset' must be an integer from 0 to {MAX_OFFSET}")
    return value


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


# -- cursors -----------------------------------------------------------------------------------


def encode_cursor(updated_at: str, session_id: str) -> str:
    """An opaque cursor: list continues after the session with this (updated_at, id)."""
    raw = msgpack.packb([updated_at, session_id], use_bin_type=True)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(value: Any) -> tuple[str, str]:
    """The (updated_at, id) a cursor points after; raises ProtocolError(bad_request)."""
    if not isinstance(value, str) or len(value) > 2 * (MAX_ID_LENGTH * 4 + 64):
        raise ProtocolError(BAD_REQUEST, "'cursor' must be a cursor string from a previous list")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        updated_at, session_id = msgpack.unpackb(raw, raw=False)
        if isinstance(updated_at, str) and isinstance(session_id, str):
            return updated_at, session_id
    except (binascii.Error, ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError):
        pass
    raise ProtocolError(BAD_REQUEST, "'cursor' is not a cursor from a previous list")


# -- timestamps --------------------------------------------------------------------------------


def format_ts(when: datetime) -> str:
    """The stored, fixed-width form of a UTC datetime (sorts as text)."""
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_ts(text: str) -> datetime:
    """A stored timestamp as a UTC-aware datetime (a naive one, as old databases hold, is UTC)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is timezone.utc:  # the stored form: "+00:00" parses to the utc singleton
        return when
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    try:
        return when.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00 is before the first representable instant
        raise ValueError(f"timestamp out of range: {text!r}") from None


# -- messages ----------------------------------------------------------------------------------


def parse_request(frame: bytes) -> dict[str, Any]:
    """Decode one request frame into a map with a known str ``op``; raises ProtocolError."""
    if len(frame) > MAX_REQUEST_SIZE:
        raise ProtocolError(TOO_LONG, f"request is {len(frame)} bytes; at most {MAX_REQUEST_SIZE}")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False, **REQUEST_UNPACK_LIMITS)
    except Exception:
        raise ProtocolError(BAD_REQUEST, "request is not a single valid msgpack value") from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, f"request must be a msgpack map, not {_kind(msg)}")
    op = msg.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, "request must have a string 'op'")
    if op not in OPS:
        shown = op if len(op) <= 40 else op[:40] + "..."
        raise ProtocolError(UNKNOWN_OP, f"unknown op {shown!r}; known: {', '.join(sorted(OPS))}")
    return msg


def ok_reply(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}
