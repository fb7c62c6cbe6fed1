"""SessionStore: the sessions table in SQLite (via sqlite-utils), its schema migrations and operations.

Durability: every connection runs in WAL mode with ``synchronous=FULL``, so a committed change
survives a kill -9 or a power cut. Writes use ``BEGIN IMMEDIATE`` (DESIGN.md §4.7): the write
lock is taken before the first read, so a read-then-write never fails half-way with
``SQLITE_BUSY``. Several operations can share one transaction (``with store.transaction():``),
which is how the service commits a batch of concurrent requests with one fsync.

Sessions are plain dicts of four strings (the wire form, see ``schemas/sessions.py``).
``updated_at`` is strictly increasing within one store, so ``list`` order is the order of changes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import sqlite_utils
from sqlite_utils.db import DescIndex

from broker.dbcheck import check_database
from schemas.sessions import (
    BAD_REQUEST,
    CONFLICT,
    MAX_LIST_LIMIT,
    NOT_FOUND,
    ProtocolError,
    check_id,
    check_title,
    encode_cursor,
    format_ts,
    parse_ts,
)

log = logging.getLogger("pryxbus.sessions.store")

Session = dict[str, str]
_COLUMNS = "id, title, created_at, updated_at"
_TICK = timedelta(microseconds=1)
RESTORE_SKEW = timedelta(minutes=1)
"""How far in the future an imported timestamp may be (another machine's clock may run ahead).
Later ones are refused: the store's clock never goes back below its newest ``updated_at``, so one
session dated 2100 would date every session created after the next restart in 2100 too."""


KEPT_REPLIES = 4096
"""Write replies kept by request id in the database (see ``remember_reply``), at least."""
PRUNE_REPLIES = 256
"""The older replies are pruned once every this many remembered."""


class StoreError(ProtocolError):
    """An operation the store refuses (``code``: ``not_found``, ``conflict``, ...)."""


class SchemaTooNew(RuntimeError):
    """The database was written by a newer pryxbus (its schema version is above ours)."""


class Written(NamedTuple):
    """What a write did: the session (as it is now, or as it was for a delete) and the event."""

    session: Session
    event: str | None
    """``"created"``, ``"updated"``, ``"deleted"``, or None when nothing changed."""


class Page(NamedTuple):
    sessions: list[Session]
    next_cursor: str | None
    """Pass to ``list(cursor=...)`` for the next page; None on the last page."""


def _row(row: tuple[str, str, str, str]) -> Session:
    return {"id": row[0], "title": row[1], "created_at": row[2], "updated_at": row[3]}


# -- migrations ----------------------------------------------------------------------------------


def _migrate_1_sessions_table(db: sqlite_utils.Database) -> None:
    """The seed's table; a seed-era table (``TIMESTAMP`` text like ``2024-01-01 12:00:00``) is kept
    and its timestamps rewritten to the fixed-width UTC form, so they sort correctly as text."""
    table = db["sessions"]
    if not table.exists():
        db.execute(
            "CREATE TABLE sessions (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
            " created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )
        return
    rows = db.execute("SELECT id, created_at, updated_at FROM sessions").fetchall()
    for sid, created, updated in rows:
        db.execute(
            "UPDATE sessions SET created_at = ?, updated_at = ? WHERE id = ?",
            [_normalise(created), _normalise(updated), sid],
        )


def _normalise(value: object) -> str:
    try:
        return format_ts(parse_ts(str(value)))
    except ValueError:
        return format_ts(datetime.fromtimestamp(0, timezone.utc))


def _migrate_2_list_index(db: sqlite_utils.Database) -> None:
    """``list`` reads this index in order: updated_at desc, then id desc as the tiebreak."""
    db["sessions"].create_index(
        [DescIndex("updated_at"), DescIndex("id")], index_name="sessions_by_updated", if_not_exists=True
    )


def _migrate_3_write_replies(db: sqlite_utils.Database) -> None:
    """The replies to recent writes by request id, kept in the write's own transaction, so a client
    retrying a write whose first attempt committed just before the service died gets the same
    answer from the next service (not ``not_found`` for a delete that worked). ``rid`` is TEXT or
    BLOB as the client sent it (TEXT affinity leaves a BLOB a BLOB)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS write_replies (seq INTEGER PRIMARY KEY, rid TEXT NOT NULL UNIQUE,"
        " reply BLOB NOT NULL)"
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migrate_1_sessions_table,
    _migrate_2_list_index,
    _migrate_3_write_replies,
]
"""Forward migrations; schema version N means MIGRATIONS[:N] have run. Append, never edit."""
SCHEMA_VERSION = len(MIGRATIONS)


class _Transaction:
    """``with store.transaction():`` — a class, not a generator: it runs on every write."""

    __slots__ = ("_conn", "_depth")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._depth = 0

    def __enter__(self) -> None:
        if not self._depth:
            self._conn.execute("BEGIN IMMEDIATE")
        self._depth += 1

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return  # a nested block: the outer one commits or rolls back
        conn = self._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
                return
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if conn.in_transaction:
            conn.execute("ROLLBACK")


class SessionStore:
    """The session table of one SQLite file. A context manager; ``close()`` is idempotent.

    Not thread-safe: one store per thread (the service uses one, from its loop).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        check_database(self.path, "sessions")
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout)
        self.db = sqlite_utils.Database(conn)
        self._conn = conn
        self._transaction = _Transaction(conn)
        try:
            if not os.access(self.path, os.W_OK):  # SQLite would open it read-only and fail each write
                raise sqlite3.OperationalError(
                    f"{self.path} cannot be written (its permissions, an immutable flag or a read-only"
                    " mount): the session store must write it"
                )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self.migrate()
            last = conn.execute("SELECT max(updated_at) FROM sessions").fetchone()[0]
            self._last = parse_ts(last) if last else datetime.fromtimestamp(0, timezone.utc)
        except BaseException:
            conn.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); nested blocks join the outer one."""
        return self._transaction

    def schema_version(self) -> int:
        if not self.db["schema_version"].exists():
            return 0
        row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> int:
        """Bring the schema up to SCHEMA_VERSION in one transaction; returns the version found.

        Raises:
            SchemaTooNew: the file was written by a newer schema than this code knows.
        """
        with self.transaction():
            found = self.schema_version()
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has session schema version {found}; this pryxbus knows up to {SCHEMA_VERSION}"
                )
            if found == SCHEMA_VERSION:
                return found
            if not self.db["schema_version"].exists():
                self.db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)")
            for version in range(found + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version - 1](self.db)
                self.db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    [version, format_ts(datetime.now(timezone.utc))],
                )
            log.info("session schema migrated from version %d to %d", found, SCHEMA_VERSION)
            return found

    def _now(self) -> str:
        """Now, but always after the last timestamp this store wrote (a clock step back keeps order)."""
        now = datetime.now(timezone.utc)
        if now <= self._last:
            now = self._last + _TICK
        self._last = now
        return format_ts(now)

    def _keep_after(self, stamp: str) -> None:
        """Make the next ``_now()`` later than ``stamp`` (a restored session's ``updated_at``), so
        ``updated_at`` stays increasing across writes and ``list`` keeps the order of changes."""
        restored = parse_ts(stamp)
        if restored > self._last:
            self._last = restored

    # -- reads -------------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        """The session with this id.

        Raises:
            StoreError: ``not_found``.
        """
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise StoreError(NOT_FOUND, f"no session with id {session_id!r}")
        return _row(row)

    def list(self, limit: int = MAX_LIST_LIMIT, *, cursor: tuple[str, str] | None = None, offset: int = 0) -> Page:
        """Sessions by ``updated_at`` descending, then ``id`` descending; at most MAX_LIST_LIMIT.

        Continue either with ``cursor`` (the decoded ``next_cursor`` of the previous page: stable
        while sessions change) or with ``offset``.
        """
        limit = max(1, min(limit, MAX_LIST_LIMIT))
        if cursor is not None:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE (updated_at, id) < (?, ?)"
                " ORDER BY updated_at DESC, id DESC LIMIT ?",
                (cursor[0], cursor[1], limit + 1),
            ).fetchall()
        else:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM sessions ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?",
                (limit + 1, offset),
            ).fetchall()
        more = len(rows) > limit
        sessions = [_row(r) for r in rows[:limit]]
        last = sessions[-1] if more else None
        return Page(sessions, encode_cursor(last["updated_at"], last["id"]) if last else None)

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM sessions").fetchone()[0])

    # -- writes ------------------------------------------------------------------------------

    def create(self, title: str, *, session_id: str | None = None) -> Written:
        """A new session (a fresh UUIDv4 id unless ``session_id`` is given).

        Creating an id that exists with the same title returns it unchanged (``event`` None):
        that is what makes a client's retried create safe.

        Raises:
            StoreError: ``conflict`` if the id exists with another title.
        """
        title = check_title(title)
        session_id = check_id(session_id) if session_id is not None else str(uuid.uuid4())
        with self.transaction():
            now = self._now()
            created = self._insert_if_missing(session_id, title, now)
            if created is not None:
                return created
            existing = self.get(session_id)
        if existing["title"] != title:
            raise StoreError(CONFLICT, f"a session with id {session_id!r} already exists with another title")
        return Written(existing, None)

    def _insert_if_missing(self, session_id: str, title: str, now: str) -> Written | None:
        """Insert a new session inside the caller's transaction; None if the id already exists."""
        cur = self._conn.execute(
            "INSERT INTO sessions (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (session_id, title, now, now),
        )
        if cur.rowcount != 1:
            return None
        return Written({"id": session_id, "title": title, "created_at": now, "updated_at": now}, "created")

    def ensure(self, session_id: str, title: str) -> Written:
        """Create the session if it is missing; otherwise keep its title and touch ``updated_at``."""
        session_id, title = check_id(session_id), check_title(title)
        with self.transaction():
            now = self._now()
            created = self._insert_if_missing(session_id, title, now)
            if created is not None:
                return created
            return self._update("UPDATE sessions SET updated_at = ?", (now,), session_id)

    def rename(self, session_id: str, title: str) -> Written:
        """Set the title (and touch ``updated_at``). Raises StoreError ``not_found``."""
        session_id, title = check_id(session_id), check_title(title)
        with self.transaction():
            return self._update("UPDATE sessions SET title = ?, updated_at = ?", (title, self._now()), session_id)

    def touch(self, session_id: str) -> Written:
        """Set ``updated_at`` to now. Raises StoreError ``not_found``."""
        session_id = check_id(session_id)
        with self.transaction():
            return self._update("UPDATE sessions SET updated_at = ?", (self._now(),), session_id)

    def delete(self, session_id: str) -> Written:
        """Delete the session; returns it as it was. Raises StoreError ``not_found``."""
        session_id = check_id(session_id)
        with self.transaction():
            rows = self._conn.execute(
                f"DELETE FROM sessions WHERE id = ? RETURNING {_COLUMNS}", (session_id,)
            ).fetchall()
        if not rows:
            raise StoreError(NOT_FOUND, f"no session with id {session_id!r}")
        return Written(_row(rows[0]), "deleted")

    def restore(self, session: dict[str, object], *, overwrite: bool = False) -> Written:
        """Put back an exported session exactly (its timestamps too); for session import.

        The same session already here is left alone; a different one is refused unless
        ``overwrite``. A restore is not a change in the conversation, so it emits no event.

        Raises:
            StoreError: ``conflict`` (a different session has this id), ``bad_request``.
        """
        try:
            row = {
                "id": check_id(session.get("id")),
                "title": check_title(session.get("title")),
                "created_at": format_ts(parse_ts(str(session["created_at"]))),
                "updated_at": format_ts(parse_ts(str(session["updated_at"]))),
            }
        except (KeyError, ValueError) as e:
            raise StoreError(BAD_REQUEST, f"not an exported session: {e}") from None
        latest = format_ts(datetime.now(timezone.utc) + RESTORE_SKEW)
        for field in ("created_at", "updated_at"):
            if row[field] > latest:  # the fixed-width form sorts as text
                raise StoreError(BAD_REQUEST, f"not an exported session: {field} {row[field]} is in the future")
        with self.transaction():
            cur = self._conn.execute(
                "INSERT INTO sessions (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (row["id"], row["title"], row["created_at"], row["updated_at"]),
            )
            if cur.rowcount == 1:
                self._keep_after(row["updated_at"])
                return Written(row, None)
            existing = self.get(row["id"])
            if existing == row:
                return Written(existing, None)
            if not overwrite:
                raise StoreError(CONFLICT, f"a different session with id {row['id']!r} exists (overwrite to replace it)")
            self._conn.execute(
                "UPDATE sessions SET title = ?, created_at = ?, updated_at = ? WHERE id = ?",
                (row["title"], row["created_at"], row["updated_at"], row["id"]),
            )
            self._keep_after(row["updated_at"])
            return Written(row, None)

    def _update(self, assignment: str, params: tuple[str, ...], session_id: str) -> Written:
        rows = self._conn.execute(
            f"{assignment} WHERE id = ? RETURNING {_COLUMNS}", (*params, session_id)
        ).fetchall()
        if not rows:
            raise StoreError(NOT_FOUND, f"no session with id {session_id!r}")
        return Written(_row(rows[0]), "updated")

    # -- replies remembered across restarts ----------------------------------------------------

    def remembered_reply(self, rid: str | bytes) -> bytes | None:
        """The reply remembered for request id ``rid`` by :meth:`remember_reply`, if still kept."""
        row = self._conn.execute("SELECT reply FROM write_replies WHERE rid = ?", (rid,)).fetchone()
        return None if row is None else bytes(row[0])

    def remember_reply(self, rid: str | bytes, reply: bytes) -> None:
        """Keep ``reply`` for ``rid``; call it inside the write's transaction, so the reply is kept
        exactly when the write commits. The last KEPT_REPLIES are kept (pruned in steps)."""
        seq = self._conn.execute(
            "INSERT OR REPLACE INTO write_replies (rid, reply) VALUES (?, ?)", (rid, reply)
        ).lastrowid
        if seq is not None and seq % PRUNE_REPLIES == 0:
            self._conn.execute("DELETE FROM write_replies WHERE seq <= ?", (seq - KEPT_REPLIES,))

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])
