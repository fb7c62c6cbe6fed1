"""The event log's ``summary``, ``publishers`` and ``import`` served by an edge from the stream
(PROTOCOL.md, Event log): the same requests and replies as the single-host log
(broker/eventlog/query.py, imports.py), computed from the events the stream holds.

- ``summary`` and ``publishers`` read the stream (every event it holds, or those above ``since``):
  the stream has one subject, so JetStream cannot pick a session's events for us.
- ``import`` only ever finds events already there. The single-host log puts an exported event back
  at its version, in a hole ``delete_session`` left; a stream sequence is assigned once, in order,
  and a removed one is never filled again, so an event cannot go back to an old version, and
  publishing it anew would give the session's old events new versions (and ``Nats-Msg-Id`` would
  keep a second import from storing them twice only within the 2-minute duplicate window). So an
  event the stream holds at its version counts as ``existing``; any other is refused
  (``conflict``), saying why; nothing is written. ``delete_session`` is not served.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from broker.backbone import replay
from broker.backbone import stream as layout
from broker.eventlog.imports import ImportRefused, parse_rows
from schemas.envelope import WANT_VERSION, MalformedEvent, decode_header
from schemas.eventlog import MAX_INT

if TYPE_CHECKING:
    from broker.backbone.edge import Edge

MAX_PUBLISHERS = 100_000
MIN_BUCKET = 0.001
LOOKUPS = 64
"""Stream messages an import asks JetStream for at once."""


class Refused(Exception):
    """A request the log refuses; ``code`` is the error reply's (``bad_request``, ``conflict``)."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


def _number(request: dict[str, Any], key: str, what: str = "seconds since the epoch") -> float | None:
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Refused(f"{key!r} must be a finite number of {what}, not {value!r}")
    return float(value)


def _whole(request: dict[str, Any], key: str, default: int, *, minimum: int = 0) -> int:
    value = request.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise Refused(f"{key!r} must be an integer from {minimum} to {MAX_INT}, not {value!r}")
    return value


def _session(request: dict[str, Any]) -> str | None:
    value = request.get("session_id")
    if value is not None and not isinstance(value, str):
        raise Refused(f"'session_id' must be a string, not {type(value).__name__}")
    return value


async def summary(edge: Edge, request: dict[str, Any]) -> dict[str, Any]:
    """Counts by type, first and last activity, optional time buckets; of one session or all."""
    session_id = _session(request)
    ts_from, ts_until = _number(request, "ts_from"), _number(request, "ts_until")
    bucket = _number(request, "bucket", "seconds")
    if bucket is not None and bucket < MIN_BUCKET:
        raise Refused(f"'bucket' must be at least {MIN_BUCKET:g} seconds, not {bucket!r}")
    every = session_id is None and ts_from is None and ts_until is None
    count, by_type, buckets = 0, {}, {}  # type: ignore[var-annotated]
    first_ts = last_ts = first_v = last_v = None
    end = edge.version
    if end > edge.version_base:
        async for version, data in replay.messages(edge, edge.version_base + 1, end):
            topic, body = layout.unpack(data)
            try:
                ts, _source, owner = decode_header(body)
            except MalformedEvent:
                ts, owner = None, None
            if not every and ((session_id is not None and owner != session_id)
                              or (ts_from is not None and (ts is None or ts < ts_from))
                              or (ts_until is not None and (ts is None or ts >= ts_until))):
                continue
            name = topic.decode()
            count += 1
            by_type[name] = by_type.get(name, 0) + 1
            first_v = version if first_v is None else first_v
            last_v = version
            if ts is not None:
                first_ts = ts if first_ts is None else min(first_ts, ts)
                last_ts = ts if last_ts is None else max(last_ts, ts)
                if bucket is not None:
                    key = (int(ts / bucket) * bucket, name)
                    buckets[key] = buckets.get(key, 0) + 1
    result: dict[str, Any] = {
        "session_id": session_id, "events": count, "by_type": dict(sorted(by_type.items())),
        "first_ts": first_ts, "last_ts": last_ts,
        "duration": (last_ts - first_ts) if first_ts is not None and last_ts is not None else 0.0,
        "first_version": first_v, "last_version": last_v,
        "imported": 0,  # an edge's import puts nothing back (see the module's docstring)
    }
    if bucket is not None:
        result["bucket"] = bucket
        result["buckets"] = [[start, name, n] for (start, name), n in sorted(buckets.items())]
    return result


async def publishers(edge: Edge, request: dict[str, Any]) -> dict[str, Any]:
    """For the identified events above ``since``: the ``limit`` publishers seen most recently,
    oldest first, each ``[publisher id, highest number, its version]``."""
    since = _whole(request, "since", 0)
    limit = min(_whole(request, "limit", MAX_PUBLISHERS, minimum=1), MAX_PUBLISHERS)
    end = edge.version
    seen: dict[int, list[int]] = {}
    if end > max(since, edge.version_base):
        async for version, data in replay.messages(edge, max(since, edge.version_base) + 1, end):
            who = layout.identity(layout.unpack(data)[1])
            if who is None:
                continue
            publisher, number = who
            number &= ~WANT_VERSION
            row = seen.get(publisher)
            if row is None:
                seen[publisher] = [publisher, number, version]
            else:
                row[1], row[2] = max(row[1], number), version
    recent = sorted(seen.values(), key=lambda row: row[2])[-limit:]
    return {"publishers": recent, "last": end}


async def import_(edge: Edge, request: dict[str, Any]) -> dict[str, int]:
    """``{"inserted": 0, "existing": n}`` when the stream holds every event of the request at its
    version; refused otherwise (nothing is written either way)."""
    session_id = _session(request)
    if not session_id:
        raise Refused("'session_id' is required: the session the imported events belong to")
    try:
        rows = parse_rows(session_id, request.get("events"))
    except ImportRefused as e:
        raise Refused(str(e), e.code) from None
    last, base = edge.version, edge.version_base
    future = [r[0] for r in rows if r[0] > last]
    if future:
        raise Refused(f"versions {future[0]}.. are above this bus's last version {last}: importing them"
                      " would collide with live events", "conflict")
    before = [r[0] for r in rows if r[0] <= base]
    if before:
        raise Refused(f"versions {before[:5]} are at or below the stream's version base {base}: they are"
                      " the single-host log's (HOME/events.db), which a backbone does not serve", "conflict")
    held = await _held(edge, [r[0] for r in rows])
    clash = [r[0] for r in rows if held.get(r[0]) not in (None, (r[1].encode(), r[6]))]
    if clash:
        raise Refused(f"the stream holds other events under versions {clash[:5]}", "conflict")
    gone = [r[0] for r in rows if held.get(r[0]) is None]
    if gone:
        raise Refused(
            f"the stream no longer holds versions {gone[:5]} (removed by its limits, or by hand): on a"
            " backbone an import cannot put an event back, since a stream sequence is assigned once and"
            " never filled again, and publishing it anew would give it a new version", "conflict")
    return {"inserted": 0, "existing": len(rows)}


async def _held(edge: Edge, versions: list[int]) -> dict[int, tuple[bytes, bytes] | None]:
    """(topic, body) the stream holds at each version, None where it holds nothing."""
    from nats.js.errors import NotFoundError

    async def one(version: int) -> tuple[int, tuple[bytes, bytes] | None]:
        try:
            msg = await edge.js.get_msg(edge.config.stream, seq=version)
        except NotFoundError:
            return version, None
        return version, layout.unpack(msg.data)

    held: dict[int, tuple[bytes, bytes] | None] = {}
    wanted = sorted(set(versions))
    for start in range(0, len(wanted), LOOKUPS):
        held.update(await asyncio.gather(*(one(v) for v in wanted[start : start + LOOKUPS])))
    return held
