"""Sessions with their events: resume, export/import files, and analytics computed from the event log.

A session's events are the logged events published with its ``session_id``. The export file is
JSON Lines (``schemas/PROTOCOL.md``, "Session export file")::

    {"pryxbus": "session-export", "format": 1, "session": {id, title, created_at, updated_at}, "events": N}
    {"version": V, "seq": S, "type": T, "ts": TS, "source": SRC, "session_id": ID, "payload": P, "body": B64}
    ...                                                       (N event lines, in version order)

``body`` is the event's envelope exactly as the broker delivered it (base64 of the msgpack bytes):
import uses it, so payloads JSON cannot express (bytes, non-string keys) survive the round trip;
``payload`` is there for people and tools that read the file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sdk.errors import InvalidEvent
from sdk.event import Event, Session, jsonable
from sdk.replay import iter_rows
from sdk.request import Requester

if TYPE_CHECKING:
    from sdk.sessions import SessionClient

FORMAT = 1
MAGIC = "session-export"
_IMPORT_CHUNK = 2_000
_IMPORT_BYTES = 16 << 20
MESSAGE_TYPES = ("channel:message", "channel:outbound_message")


@dataclass(frozen=True)
class SessionHistory:
    """A session and its logged events, in version order (what ``bus.sessions.resume`` returns).

    Attributes:
        session: the session as the session service has it.
        events: every logged event published with this session's id.
        version: the log's newest version when the history was read: subscribe with
            ``since=version`` to continue without a gap.
    """

    session: Session
    events: list[Event]
    version: int


def _decode(row: list[Any]) -> Event:
    from sdk.replay import decode_row

    return decode_row(row)


def resume(sessions: SessionClient, log: Requester, session_id: str) -> SessionHistory:
    session = sessions.get(session_id)
    version = int(log.call({"op": "ping"})["last"])
    rows = iter_rows(log, session_id=session_id, until=version) if version else iter([])
    return SessionHistory(session, [_decode(r) for r in rows], version)



def export(sessions: SessionClient, log: Requester, session_id: str, path: str | os.PathLike[str]) -> int:
    session = sessions.get(session_id)
    rows = list(iter_rows(log, session_id=session_id))
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            header = {"pryxbus": MAGIC, "format": FORMAT, "session": session.to_dict(), "events": len(rows)}
            f.write(json.dumps(header, ensure_ascii=False) + "\n")
            for row in rows:
                event = _decode(row)
                line = event.to_dict()
                line["payload"] = jsonable(line["payload"])
                line["body"] = base64.b64encode(row[3]).decode("ascii")
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # no half-written file left behind (path itself is untouched)
        raise
    return len(rows)


def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[list[Any]]]:
    """The session (wire form) and the log rows ``[version, seq, type, body]`` of an export file.

    Raises:
        InvalidEvent: the file is not a pryxbus session export.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise InvalidEvent(f"cannot read session export {os.fspath(path)!r}: {e}") from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("pryxbus") != MAGIC:
        raise InvalidEvent(f"{os.fspath(path)!r} is not a pryxbus session export")
    header = lines[0]
    if header.get("format") != FORMAT:
        raise InvalidEvent(f"unknown session export format {header.get('format')!r} (this pryxbus reads {FORMAT})")
    events = lines[1:]
    if header.get("events") != len(events):
        raise InvalidEvent(f"session export is truncated: {len(events)} of {header.get('events')} events")
    try:
        rows = [[int(e["version"]), int(e["seq"]), str(e["type"]), base64.b64decode(e["body"], validate=True)] for e in events]
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidEvent(f"bad event line in session export: {e}") from None
    return header["session"], rows


def import_(
    sessions: SessionClient, log: Requester, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Session:
    session, rows = read_export(path)
    restored = sessions.restore(session, overwrite=overwrite)
    for chunk in _import_chunks(rows):
        log.call({"op": "import", "events": chunk})
    return restored


def _import_chunks(rows: list[list[Any]]) -> Iterator[list[list[Any]]]:
    """``rows`` in requests of at most _IMPORT_CHUNK events and _IMPORT_BYTES of bodies (one
    event alone may be bigger): the log refuses a request over 64 MiB, however few its events."""
    chunk: list[list[Any]] = []
    size = 0
    for row in rows:
        if chunk and (len(chunk) == _IMPORT_CHUNK or size + len(row[3]) > _IMPORT_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += len(row[3])
    if chunk:
        yield chunk


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def session_stats(sessions: SessionClient, log: Requester, session_id: str) -> dict[str, Any]:
    session = sessions.get(session_id)
    summary = log.call({"op": "summary", "session_id": session_id})
    stamps = [session.created_at.timestamp(), session.updated_at.timestamp()]
    stamps += [t for t in (summary["first_ts"], summary["last_ts"]) if t is not None]
    first, last = min(stamps), max(stamps)
    return {
        "session": session.to_dict(),
        "events": summary["events"],
        "by_type": summary["by_type"],
        "messages": sum(summary["by_type"].get(t, 0) for t in MESSAGE_TYPES),
        "first_activity": _iso(first),
        "last_activity": _iso(last),
        "duration": last - first,
        "first_version": summary["first_version"],
        "last_version": summary["last_version"],
    }


def bus_summary(
    log: Requester, *, bucket: float | None = None, ts_from: float | None = None, ts_until: float | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"op": "summary"}
    for key, value in (("bucket", bucket), ("ts_from", ts_from), ("ts_until", ts_until)):
        if value is not None:
            request[key] = value
    return log.call(request)


LogGetter = Callable[[], Requester]
