"""Sessions with their events: resume, export/import files, and analytics computed from the event log.

A session's events are the logged events published with its ``session_id``. The export file is
JSON Lines (``schemas/PROTOCOL.md``, "Session export file")::

    {"pryxbus": "session-export", "format": 1, "session": {id, title, created_at, updated_at}, "events": N}
    {"version": V, "seq": S, "type": T, "ts": TS, "source": SRC, "session_id": ID, "payload": P, "body": B64}
    ...                                                       (N event lines, in version order)

``body`` is the event's envelope exactly as the broker delivered it (base64 of the msgpack bytes):
import uses it, so payloads JSON cannot express (bytes, non-string keys) survive the round trip;
``payload`` is there for people and tools that read the file.

Each operation is a flow (:mod:`sdk.core.flows`): written once, driven by the sync session client
and natively by the asyncio one (a file is read or written in a worker thread there).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sdk.core.decoding import event_of_row
from sdk.core.flows import Ask, Flow, Work, log_pages, replay_request, tail_request
from sdk.errors import RemoteError
from sdk.event import Event, Session, jsonable
from sdk.export_file import FORMAT, MAGIC, ExportReader
from sdk.sessions import Call, SessionCalls, translated

IMPORT_CHUNK = 2_000
"""Most events in one ``import`` request to the log."""
IMPORT_BYTES = 16 << 20
"""Most bytes of bodies in one ``import`` request (one event alone may be bigger)."""
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


def session_call(call: Call[Any]) -> Flow[Any]:
    """One session-service request as a flow step: its parsed result, or its SessionError."""
    try:
        result = yield Ask("sessions", call.request)
    except RemoteError as e:
        raise translated(e) from None
    return call.parse(result)


def session_rows(session_id: str, *, until: int | None = None) -> Flow[list[list[Any]]]:
    """Every logged row ``[version, topic_seq, type, body]`` of one session (up to ``until``), page by page."""
    rows: list[list[Any]] = []
    request = replay_request(session_id=session_id, until=until)
    yield from log_pages(request, wait=False, timeout=0.0, on_page=lambda page, _: rows.extend(page))
    return rows


def resume(session_id: str) -> Flow[SessionHistory]:
    """The session and its logged events, and the log's newest version when they were read."""
    session = yield from session_call(SessionCalls.get(session_id))
    version = int((yield Ask("log", {"op": "ping"}))["last"])
    rows = (yield from session_rows(session_id, until=version)) if version else []
    return SessionHistory(session, [event_of_row(r) for r in rows], version)


def export(session_id: str, path: str | os.PathLike[str]) -> Flow[int]:
    """Write the session and its events to ``path``; returns how many events."""
    session = yield from session_call(SessionCalls.get(session_id))
    rows = yield from session_rows(session_id)
    yield Work(lambda: write_export(path, session, rows))
    return len(rows)


def write_export(path: str | os.PathLike[str], session: Session, rows: list[list[Any]]) -> None:
    """Write an export file atomically (a temporary file renamed over ``path``)."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            header = {"pryxbus": MAGIC, "format": FORMAT, "session": session.to_dict(), "events": len(rows)}
            f.write(json.dumps(header, ensure_ascii=False) + "\n")
            for row in rows:
                line = event_of_row(row).to_dict()
                line["payload"] = jsonable(line["payload"])
                line["body"] = base64.b64encode(row[3]).decode("ascii")
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # no half-written file left behind (path itself is untouched)
        raise


def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[list[Any]]]:
    """The session (wire form) and the log rows ``[version, seq, type, body]`` of an export file.

    Raises:
        InvalidEvent: the file is not a pryxbus session export, or is beyond the reader's bounds.
    """
    with ExportReader(path) as export:
        return export.session, list(export.rows())


def import_(path: str | os.PathLike[str], *, overwrite: bool = False) -> Flow[Session]:
    """Restore the session of an export file, then its events into the log.

    The file is streamed, a request at a time, twice: first the log checks every event, so a file
    it refuses changes nothing (not even the session); then the session is restored and the
    events imported.
    """
    session = (yield Work(lambda: _header(path))).session
    yield from _send_events(path, session["id"], check=True)
    restored = yield from session_call(SessionCalls.restore(session, overwrite))
    yield from _send_events(path, session["id"], check=False)
    return restored


def _send_events(path: str | os.PathLike[str], session_id: str, *, check: bool) -> Flow[None]:
    """One pass over the file's events: each request of them imported (or, with ``check``, checked)."""
    export = yield Work(lambda: ExportReader(path))
    try:
        chunks = import_chunks(export.rows())
        while (chunk := (yield Work(lambda: next(chunks, None)))) is not None:
            request = {"op": "import", "session_id": session_id, "events": chunk}
            yield Ask("log", {**request, "check": True} if check else request)
    finally:
        export.close()


def _header(path: str | os.PathLike[str]) -> ExportReader:
    with ExportReader(path) as export:
        return export


def import_chunks(rows: Iterable[list[Any]]) -> Iterator[list[list[Any]]]:
    """``rows`` in requests of at most IMPORT_CHUNK events and IMPORT_BYTES of bodies (one
    event alone may be bigger): the log refuses a request over 64 MiB, however few its events."""
    chunk: list[list[Any]] = []
    size = 0
    for row in rows:
        if chunk and (len(chunk) == IMPORT_CHUNK or size + len(row[3]) > IMPORT_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += len(row[3])
    if chunk:
        yield chunk


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def session_stats(session_id: str) -> Flow[dict[str, Any]]:
    """One session's analytics from the event log (see ``SessionClient.stats``)."""
    session = yield from session_call(SessionCalls.get(session_id))
    summary = yield Ask("log", {"op": "summary", "session_id": session_id})
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
    *, bucket: float | None = None, ts_from: float | None = None, ts_until: float | None = None
) -> Flow[dict[str, Any]]:
    """Bus-wide analytics from the event log (see ``Bus.log_summary``)."""
    request: dict[str, Any] = {"op": "summary"}
    for key, value in (("bucket", bucket), ("ts_from", ts_from), ("ts_until", ts_until)):
        if value is not None:
            request[key] = value
    return (yield Ask("log", request))


def log_tail(patterns: tuple[str, ...], *, limit: int, session_id: str | None = None) -> Flow[list[Event]]:
    """The newest ``limit`` logged events matching ``patterns``, oldest first (see ``Bus.log_tail``)."""
    reply = yield Ask("log", tail_request(patterns, limit=limit, session_id=session_id))
    return [event_of_row(row) for row in reply["events"]]
