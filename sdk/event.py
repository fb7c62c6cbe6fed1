"""Values the SDK hands out: ``Event`` and ``Session`` (frozen, no reference to any socket)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_JSON_KEYS = (str, int, bool, type(None))


@dataclass(frozen=True)
class Event:
    """One event as a subscriber receives it.

    Attributes:
        type: the event type (its topic), e.g. ``"channel:message"``.
        payload: the decoded payload (whatever msgpack carried: dict, list, str, ...).
        version: the global version the broker stamped: 1, 2, 3, ... in delivery order.
        ts: when the publisher sent it, in seconds since the epoch (publisher's clock).
        source: the publishing component's ``name``.
        session_id: the session this event belongs to, if any.
        seq: the per-topic sequence the broker stamped (1, 2, 3, ... per type): the wire's and
            the log's ``topic_seq`` (also readable under that name).
        publisher: ``(publisher id, number)`` of an identified event (PROTOCOL.md §4.1: the
            publishing bus's random id and its count of events, from 1), None for an anonymous
            one. The same pair never names two events: a key to de-duplicate on downstream.
    """

    type: str
    payload: Any
    version: int
    ts: float
    source: str
    session_id: str | None = None
    seq: int = 0
    publisher: tuple[int, int] | None = None

    @property
    def topic_seq(self) -> int:
        """The per-topic sequence under its wire name (PROTOCOL.md): the same as ``seq``."""
        return self.seq

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``pryxbus sub`` prints)."""
        return {
            "type": self.type,
            "version": self.version,
            "seq": self.seq,
            "ts": self.ts,
            "source": self.source,
            "session_id": self.session_id,
            "payload": self.payload,
        }


@dataclass(frozen=True, slots=True)
class Session:
    """A conversation session as the session service stores it (datetimes are UTC-aware)."""

    id: str
    title: str
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, str]:
        """The wire form: timestamps fixed-width (``...T12:00:00.000000+00:00``), as the service stores them."""
        return {
            "id": self.id,
            "title": self.title,
            "created_at": self.created_at.isoformat(timespec="microseconds"),
            "updated_at": self.updated_at.isoformat(timespec="microseconds"),
        }


JSON_DEPTH = 200
"""Nesting ``jsonable`` keeps; deeper values are written as ``"..."`` (msgpack allows ~1000 levels,
which would exhaust the JSON encoder's recursion)."""


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON can hold it (what ``pryxbus sub``, ``log tail`` and session exports
    print): what JSON lacks is written as its Python ``repr`` — bytes, NaN and infinities, map keys
    that are not strings or whole numbers — any other object as its ``str``, and what is nested
    deeper than JSON_DEPTH as ``"..."``."""
    if isinstance(value, str) or value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth >= JSON_DEPTH and isinstance(value, (dict, list, tuple)):
        return "..."
    if isinstance(value, dict):
        return {(k if isinstance(k, _JSON_KEYS) else repr(k)): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value))
    return str(value)
