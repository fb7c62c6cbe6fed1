"""Putting a session's exported events back into the event log, and taking them out.

An export file is written by anyone, so the log, not the client, decides what an import may write:

- every event must belong to the session being imported (its envelope's ``session_id``);
- a version the log holds must hold the same event (importing a file twice changes nothing);
- a version the log does not hold may only be filled if this log once held it *for that session*
  and gave it up through ``delete_session`` (the ``vacated`` table). A version the log never held
  (lost in a gap, or above its last version) or held for another session stays empty, so a
  forged file cannot put words in another session's history;
- a request is checked whole before anything is written, and written in one transaction;
- what an import wrote is listed in the ``imported`` table, so it stays distinguishable from
  what the bus delivered live (replay pages list those versions, summaries count them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from broker.eventlog.store import EVENT_COLUMNS, EventStore
from schemas.envelope import decode_header
from schemas.topics import InvalidType, check_type

_TABLES = (
    "CREATE TABLE IF NOT EXISTS vacated (version INTEGER PRIMARY KEY, session_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS imported (version INTEGER PRIMARY KEY, session_id TEXT NOT NULL,"
    " imported_at REAL NOT NULL)",
)
_INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS[:7])}) VALUES (?, ?, ?, ?, ?, ?, ?)"
"""An imported event has no publisher identity: its ``pub_id`` and ``pub_num`` stay NULL."""
_CHUNK = 500
"""Versions per ``IN (...)`` lookup (SQLite's parameter limit is far above)."""

Row = tuple[int, str, int, float, str, "str | None", bytes]


class ImportRefused(Exception):
    """An import (or its check) the log refuses; ``code`` is ``bad_request`` or ``conflict``."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


def parse_rows(session_id: str, events: object) -> list[Row]:
    """The store rows of an import request's ``events``, each checked to belong to ``session_id``.

    Raises:
        ImportRefused: a row is not ``[version, topic_seq, type, body]`` or names another session.
    """
    if not isinstance(events, list):
        raise ImportRefused("'events' must be a list of [version, topic_seq, type, body]")
    rows: list[Row] = []
    for item in events:
        if not (isinstance(item, list) and len(item) == 4):
            raise ImportRefused("each event must be [version, topic_seq, type, body]")
        version, seq, event_type, body = item
        if not (isinstance(version, int) and version > 0 and isinstance(seq, int)):
            raise ImportRefused("version and topic_seq must be positive integers")
        if not isinstance(body, bytes):
            raise ImportRefused("body must be bytes (the envelope as delivered)")
        try:
            check_type(event_type)
            ts, source, owner = decode_header(body)
        except (InvalidType, ValueError) as e:
            raise ImportRefused(f"event {version}: {e}") from None
        if owner != session_id:
            raise ImportRefused(
                f"event {version} belongs to session {owner!r}, not to the imported session {session_id!r}"
            )
        rows.append((version, event_type, seq, ts, source, owner, body))
    return rows


class SessionImports:
    """The import and delete side of the log's sessions, over the store's connection."""

    def __init__(self, store: EventStore, last_version: Callable[[], int]) -> None:
        self.store = store
        self.last_version = last_version
        with store.conn:
            for sql in _TABLES:
                store.conn.execute(sql)

    def _lookup(self, sql: str, versions: list[int]) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(versions), _CHUNK):
            chunk = versions[start : start + _CHUNK]
            found += self.store.conn.execute(sql.format(", ".join("?" * len(chunk))), chunk).fetchall()
        return found

    def import_(self, session_id: str, events: object, *, check: bool = False) -> dict[str, int]:
        """Insert the events of one session (or with ``check``, only say whether it would).

        Returns ``{"inserted": n, "existing": n}`` (with ``check``: what it would insert).

        Raises:
            ImportRefused: anything in the request is refused; then nothing was written.
        """
        rows = parse_rows(session_id, events)
        last = self.last_version()
        future = [r[0] for r in rows if r[0] > last]
        if future:
            raise ImportRefused(
                f"versions {future[0]}.. are above this log's last version {last}: importing them would"
                " collide with live events", "conflict"
            )
        existing = {v: (t, b) for v, (t, b, _s) in self.store.events_at([r[0] for r in rows]).items()}
        clash = [r[0] for r in rows if r[0] in existing and existing[r[0]] != (r[1], r[6])]
        if clash:
            raise ImportRefused(f"the log holds other events under versions {clash[:5]}", "conflict")
        new = [r for r in rows if r[0] not in existing]
        vacated = dict(self._lookup("SELECT version, session_id FROM vacated WHERE version IN ({})", [r[0] for r in new]))
        never = [r[0] for r in new if vacated.get(r[0]) != session_id]
        if never:
            raise ImportRefused(
                f"this log never held versions {never[:5]} for session {session_id!r} (lost in a gap, or"
                " another session's): an import only puts back events the log gave up with delete_session",
                "conflict",
            )
        if not check and new:
            now = time.time()
            with self.store.conn as conn:
                conn.executemany(_INSERT, new)
                conn.executemany("DELETE FROM vacated WHERE version = ?", [(r[0],) for r in new])
                conn.executemany(
                    "INSERT OR REPLACE INTO imported (version, session_id, imported_at) VALUES (?, ?, ?)",
                    [(r[0], session_id, now) for r in new],
                )
        return {"inserted": len(new), "existing": len(rows) - len(new)}

    def delete_session(self, session_id: str) -> int:
        """Drop one session's events, remembering their versions as that session's to import back."""
        with self.store.conn as conn:
            versions = [(v, session_id) for version, n in conn.execute(
                "SELECT version, n FROM events WHERE session_id = ?", (session_id,)
            ) for v in range(version, version + (n or 1))]
            conn.executemany("INSERT OR REPLACE INTO vacated (version, session_id) VALUES (?, ?)", versions)
            conn.execute(
                "DELETE FROM imported WHERE version IN (SELECT version FROM events WHERE session_id = ?)",
                (session_id,),
            )
            conn.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
            return len(versions)

    def imported_among(self, versions: list[int]) -> list[int]:
        """Which of ``versions`` (a replay page's) came from an import, in order."""
        if not versions:
            return []
        return sorted(r[0] for r in self._lookup("SELECT version FROM imported WHERE version IN ({})", versions))

    def imported_count(self, session_id: str | None) -> int:
        """How many of the logged events (of one session, or all) came from an import."""
        sql = "SELECT count(*) FROM imported i JOIN events e USING (version)"
        if session_id is None:
            return int(self.store.conn.execute(sql).fetchone()[0])
        return int(self.store.conn.execute(sql + " WHERE e.session_id = ?", (session_id,)).fetchone()[0])
