"""The event log's SQLite file ``HOME/events.db``: schema, batched appends, pages, retention.

One row per stamped event: the stamp and the envelope fields queries need (type, ts, source,
session_id) next to the raw body bytes, exactly as the broker delivered them. The version is
the primary key (the rowid), so version ranges are B-tree range scans and appends are in order.

A run whose events share type, source and session id (a batch from ``publish_many``, or one
publisher's events the broker delivered together) is one row: ``n`` events from ``version`` on,
their bodies one after another in ``body``, their lengths in ``sizes`` (4 bytes each, big-endian:
the run's stamp frame after its 16 bytes). If their ts differ, ``ts`` is the lowest and ``ts_last``
the highest, and a filter on ts reads each event's own from its body (:func:`event_ts`). The
publisher of an identified run is its last event's (the events before it are numbered down from
it). Readers expand such rows (:func:`expand`).

Tables and indexes are made with sqlite-utils; the hot append is one ``executemany`` per batch.
"""

from __future__ import annotations

import math
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlite_utils

from broker.dbcheck import check_database
from schemas.envelope import FLOAT64

DB_FILE = "events.db"

EVENT_COLUMNS = ("version", "type", "topic_seq", "ts", "source", "session_id", "body", "pub_id", "pub_num")
_INSERT = f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_RUN = f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}, n, sizes, ts_last) VALUES ({', '.join('?' * 12)})"

PAGE_SIZE = 4096
WAL_BYTES = 64 * 1024 * 1024
"""The WAL grows to about this much between checkpoints."""

Row = tuple[int, str, int, float, str, "str | None", bytes, "int | None", "int | None"]
"""An event as appended; ``pub_id`` (the publisher id as a signed 64-bit integer, SQLite's) and
``pub_num`` are None for an anonymous publish."""
RunRow = tuple[int, str, int, float, str, "str | None", bytes, "int | None", "int | None", int, bytes, "float | None"]
"""A run as one row: a Row of its first version (with the lowest ts) and all its bodies, then
``n``, ``sizes`` and ``ts_last`` (None if every event has the same ts); the publisher, if any, is
its last event's."""
_SIGN = 1 << 63


def event_ts(body: bytes) -> float:
    """The ts of an event of a run's row (its body is in the SDK's shape: the float64 at byte 3)."""
    return float(FLOAT64.unpack_from(body, 3)[0])


def expand(version: int, topic_seq: int, event_type: str, body: bytes, n: int | None, sizes: bytes | None,
           ) -> list[tuple[int, int, str, bytes]]:
    """``(version, topic_seq, type, body)`` of each event a row holds."""
    if not n:
        return [(version, topic_seq, event_type, body)]
    out, start = [], 0
    for i, size in enumerate(struct.unpack(f"!{n}I", sizes or b"")):
        out.append((version + i, topic_seq + i, event_type, body[start : start + size]))
        start += size
    return out


def signed_id(publisher: int) -> int:
    """A u64 publisher id as SQLite stores it (a signed 64-bit integer)."""
    return publisher - (1 << 64) if publisher >= _SIGN else publisher


def unsigned_id(stored: int) -> int:
    return stored + (1 << 64) if stored < 0 else stored


def db_path(home: str | Path) -> Path:
    return Path(home) / DB_FILE


def last_logged_version(home: str | Path) -> int:
    """The highest version in ``HOME/events.db``, 0 if there is no log (read-only, never creates it)."""
    path = db_path(home)
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            try:
                row = conn.execute(_LAST).fetchone()
            except sqlite3.OperationalError:  # a log from before run rows: no column n
                row = conn.execute("SELECT max(version) FROM events").fetchone()
            high = conn.execute("SELECT value FROM meta WHERE key = 'high_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return max(int(row[0] or 0) if row else 0, int(high[0]) if high else 0)


_LAST = "SELECT version + coalesce(n, 1) - 1 FROM events ORDER BY version DESC LIMIT 1"


class EventStore:
    """The log's database. Owns its connection; a context manager with an idempotent ``close()``."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        check_database(self.path, "logged events")
        self.db = sqlite_utils.Database(self.path)
        self.conn = self.db.conn
        # A commit writes each page it changed whole into the WAL: small pages keep a lone event's
        # commit cheap (batches cost the same). page_size only applies to a new file.
        self.conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self.db.enable_wal()
        # In pages of this file's size: a log made before keeps its 16 KiB pages.
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        self.conn.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_BYTES // page_size)}")  # few checkpoints
        # WAL + NORMAL: a committed batch survives a crash of any process (not a power cut).
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self._create()
        self._closed = False

    def _create(self) -> None:
        db = self.db
        if "events" not in db.table_names():
            db["events"].create(
                {
                    "version": int,
                    "type": str,
                    "topic_seq": int,
                    "ts": float,
                    "source": str,
                    "session_id": str,
                    "body": bytes,
                    "pub_id": int,
                    "pub_num": int,
                    "n": int,
                    "sizes": bytes,
                    "ts_last": float,
                },
                pk="version",
                not_null={"type", "topic_seq", "body"},
            )
        else:  # a log written before identified publishing or run rows: the columns start out NULL
            have = {row[1] for row in self.conn.execute("PRAGMA table_info(events)")}
            for column, kind in (("pub_id", "INTEGER"), ("pub_num", "INTEGER"), ("n", "INTEGER"), ("sizes", "BLOB"),
                                 ("ts_last", "REAL")):
                if column not in have:
                    self.conn.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
        # For ``publishers``: the identified events of a version range, without a look at the rest.
        db.execute(
            "CREATE INDEX IF NOT EXISTS events_pub ON events (version, pub_id, pub_num)"
            " WHERE pub_id IS NOT NULL"
        )
        # Partial index: events without a session cost nothing extra on append.
        db.execute(
            "CREATE INDEX IF NOT EXISTS events_session ON events (session_id, version)"
            " WHERE session_id IS NOT NULL"
        )
        if "gaps" not in db.table_names():
            db["gaps"].create(
                {
                    "id": int,
                    "kind": str,
                    "first_missing": int,
                    "last_missing": int,
                    "missing": int,
                    "detected_at": float,
                },
                pk="id",
            )
        if "meta" not in db.table_names():
            db["meta"].create({"key": str, "value": int}, pk="key")

    # -- writing -----------------------------------------------------------------------------

    def append(self, rows: list[Row], runs: list[RunRow] | None = None) -> None:
        """Append a batch in one transaction (rows already in the log are ignored: the caller
        never appends a run over versions the log holds, see :meth:`present`)."""
        with self.conn:
            self.conn.executemany(_INSERT, rows)
            if runs:
                self.conn.executemany(_INSERT_RUN, runs)

    def record_gap(self, kind: str, first_missing: int, last_missing: int) -> int:
        """Record a gap; returns its id."""
        with self.conn:
            cursor = self.conn.execute(
                "INSERT INTO gaps (kind, first_missing, last_missing, missing, detected_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind, first_missing, last_missing, last_missing - first_missing + 1, time.time()),
            )
        return int(cursor.lastrowid or 0)

    def fill_gaps(self, low: int, high: int) -> list[tuple[int, str, int, list[int]]]:
        """Gap records overlapping ``[low, high]`` in which events are now present (sent again by
        the broker) are replaced by the ranges still missing. Returns, for each record changed,
        (id, kind, versions filled, ids of the records for what is still missing: none once the
        gap is whole again)."""
        changed = []
        with self.conn:
            gaps = self.conn.execute(
                "SELECT id, kind, first_missing, last_missing, detected_at FROM gaps"
                " WHERE last_missing >= ? AND first_missing <= ?",
                (low, high),
            ).fetchall()
            for gap_id, kind, first, last, detected_at in gaps:
                present = self.present(first, last)
                if not present:
                    continue
                self.conn.execute("DELETE FROM gaps WHERE id = ?", (gap_id,))
                start, pieces = first, []
                for version in [*present, last + 1]:
                    if version > start:
                        cursor = self.conn.execute(
                            "INSERT INTO gaps (kind, first_missing, last_missing, missing, detected_at)"
                            " VALUES (?, ?, ?, ?, ?)",
                            (kind, start, version - 1, version - start, detected_at),
                        )
                        pieces.append(int(cursor.lastrowid or 0))
                    start = version + 1
                changed.append((gap_id, kind, len(present), pieces))
        return changed

    def trim(self, *, keep: int | None = None, max_age: float | None = None) -> int:
        """Delete the oldest events beyond ``keep`` and those older than ``max_age`` seconds.

        Age is trimmed from the oldest version forward and stops at the first event young enough,
        so it follows publisher timestamps only as far as they rise with the version. A run's row
        the cut falls in keeps the events above it. The highest version ever logged is kept in
        ``meta`` so a trimmed log still continues the count. Returns how many events went.
        """
        cutoff: int | None = None
        if keep is not None:  # the row holding the newest event with `keep` events above it
            row = self.conn.execute(
                "SELECT version, held, newer FROM (SELECT version, coalesce(n, 1) AS held,"
                " sum(coalesce(n, 1)) OVER (ORDER BY version DESC) AS newer FROM events ORDER BY version DESC)"
                " WHERE newer > ? LIMIT 1", (keep,)
            ).fetchone()
            if row:
                version, held, newer = row
                cutoff = version + held - 1 - (keep - (newer - held))
        if max_age is not None:
            horizon = time.time() - max_age
            row = self.conn.execute(
                "SELECT version, topic_seq, type, body, n, sizes FROM events WHERE coalesce(ts_last, ts) >= ?"
                " ORDER BY version LIMIT 1", (horizon,)
            ).fetchone()
            if row is None:
                old = self.last_version()
            else:  # in a run's row, the events before its first young one are old
                old = row[0] - 1
                if row[4]:
                    for version, _seq, _type, body in expand(*row):
                        if event_ts(body) >= horizon:
                            break
                        old = version
            cutoff = old if cutoff is None else max(cutoff, old)
        if not cutoff:
            return 0
        with self.conn:
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('high_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                (self.last_version(),),
            )
            events = self.conn.execute(
                "SELECT count(*) + coalesce(sum(n - 1), 0) FROM events WHERE version <= ?", (cutoff,)
            ).fetchone()[0]
            kept = self._keep_above(cutoff)
            self.conn.execute("DELETE FROM events WHERE version <= ?", (cutoff,))
            if kept is not None:
                self.conn.executemany(_INSERT, kept[0])
                self.conn.executemany(_INSERT_RUN, kept[1])
            return int(events) - (0 if kept is None else len(kept[0]) + sum(r[9] for r in kept[1]))

    def _keep_above(self, cutoff: int) -> tuple[list[Row], list[RunRow]] | None:
        """The events above ``cutoff`` of the run's row it falls in, as rows to write again after
        the row is deleted (None if it falls in no run's row)."""
        row = self.conn.execute(
            "SELECT version, type, topic_seq, ts, source, session_id, body, pub_id, pub_num, n, sizes, ts_last"
            " FROM events WHERE version <= ? ORDER BY version DESC LIMIT 1", (cutoff,)
        ).fetchone()
        if row is None or not row[9] or row[0] + row[9] - 1 <= cutoff:
            return None
        version, event_type, topic_seq, ts, source, session_id, body, pub_id, pub_num, n, sizes, ts_last = row
        skip = cutoff + 1 - version
        lengths = struct.unpack(f"!{n}I", sizes)
        rest = bytes(body[sum(lengths[:skip]) :])
        if n - skip == 1:
            return [(cutoff + 1, event_type, topic_seq + skip, event_ts(rest) if ts_last is not None else ts,
                     source, session_id, rest, pub_id, pub_num)], []
        if ts_last is not None:
            stamps = [event_ts(b) for *_, b in expand(cutoff + 1, 0, event_type, rest, n - skip, sizes[4 * skip :])]
            ts, ts_last = min(stamps), max(stamps)
        return [], [(cutoff + 1, event_type, topic_seq + skip, ts, source, session_id, rest, pub_id, pub_num,
                     n - skip, sizes[4 * skip :], ts_last if ts_last != ts else None)]

    # -- reading -----------------------------------------------------------------------------

    def last_version(self) -> int:
        row = self.conn.execute(_LAST).fetchone()
        return int(row[0]) if row else 0

    def first_version(self) -> int:
        return int(self.conn.execute("SELECT min(version) FROM events").fetchone()[0] or 0)

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) + coalesce(sum(n - 1), 0) FROM events").fetchone()[0])

    def _row_at(self, version: int) -> tuple[int, int] | None:
        """``(first version, events)`` of the row at or below ``version`` (None: none is)."""
        row = self.conn.execute(
            "SELECT version, n FROM events WHERE version <= ? ORDER BY version DESC LIMIT 1", (version,)
        ).fetchone()
        return None if row is None else (row[0], row[1] or 1)

    def _row_before(self, version: int) -> int:
        """A version to read rows above so as to include the one holding ``version + 1`` (a run
        row may start below it)."""
        row = self._row_at(version)
        return row[0] - 1 if row and row[0] + row[1] - 1 > version else version

    def present(self, low: int, high: int) -> list[int]:
        """The versions from ``low`` to ``high`` the log holds, in order."""
        out: list[int] = []
        for version, n in self.conn.execute(
            "SELECT version, n FROM events WHERE version > ? AND version <= ? ORDER BY version",
            (self._row_before(low - 1), high),
        ):
            out.extend(v for v in range(version, version + (n or 1)) if low <= v <= high)
        return out

    def events_at(self, versions: list[int]) -> dict[int, tuple[str, bytes, str | None]]:
        """``version -> (type, body, session_id)`` of those of ``versions`` the log holds."""
        out: dict[int, tuple[str, bytes, str | None]] = {}
        held: dict[int, tuple[str, bytes, str | None]] = {}  # the events of the last row read
        for version in sorted(set(versions)):
            if version not in held:
                # The row's extent first: a version above the end of a run's row (say, one that
                # delete_session vacated) must not split the run's bodies again for each lookup.
                at = self._row_at(version)
                if at is None or at[0] + at[1] - 1 < version:
                    continue
                row = self.conn.execute(
                    "SELECT version, topic_seq, type, body, n, sizes, session_id FROM events WHERE version = ?",
                    (at[0],),
                ).fetchone()
                held = {v: (t, bytes(b), row[6]) for v, _seq, t, b in expand(*row[:6])}
            if version in held:
                out[version] = held[version]
        return out

    def publishers(self, *, since: int, limit: int) -> list[list[int]]:
        """``[[publisher id, highest number, its version], ...]`` of the publishers of the events
        above ``since``: the ``limit`` most recently seen, oldest first."""
        rows = self.conn.execute(
            "SELECT pub_id, max(pub_num), max(version + coalesce(n, 1) - 1) AS last FROM events"
            " WHERE version > ? AND pub_id IS NOT NULL GROUP BY pub_id ORDER BY last DESC LIMIT ?",
            (self._row_before(since), limit),  # a run's row holding since + 1: its publisher is its last event's
        ).fetchall()
        return [[unsigned_id(p), n, v] for p, n, v in reversed(rows)]

    def gap_totals(self) -> tuple[int, int]:
        """(gap records, versions missing) over the log's whole life, every restart included."""
        row = self.conn.execute("SELECT count(*), coalesce(sum(missing), 0) FROM gaps").fetchone()
        return int(row[0]), int(row[1])

    def first_missing(self, above: int) -> int | None:
        """The lowest version missing in a gap record that reaches above ``above``, or None."""
        row = self.conn.execute("SELECT min(first_missing) FROM gaps WHERE last_missing > ?", (above,)).fetchone()
        return None if row[0] is None else int(row[0])

    def gaps(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM gaps ORDER BY id DESC LIMIT ?", [limit]))

    def page(
        self,
        *,
        since: int,
        until: int | None,
        limit: int,
        types: Iterable[str] | None = None,
        matches: Callable[[str], bool] | None = None,
        session_id: str | None = None,
        ts_from: float | None = None,
        ts_until: float | None = None,
        max_scan: int = 200_000,
    ) -> tuple[list[tuple[int, int, str, bytes]], int, bool]:
        """Events with ``since < version <= until`` matching the filters, in version order.

        Returns ``(rows, next_since, exhausted)``: at most ``limit`` rows of
        ``(version, topic_seq, type, body)``; where the next page starts; and whether the scan
        reached the end of the range (or of the log).
        """
        if until is not None and until <= since:  # nothing to scan (a run's row may hold since and until)
            return [], since, True
        where = ["version > ?"]
        params: list[Any] = []
        if until is not None:
            where.append("version <= ?")
            params.append(until)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if ts_from is not None:
            where.append("coalesce(ts_last, ts) >= ?")
            params.append(ts_from)
        if ts_until is not None:
            where.append("ts < ?")
            params.append(ts_until)
        if types is not None:
            types = list(types)
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        sql = f"SELECT version, topic_seq, type, body, n, sizes, ts_last FROM events WHERE {' AND '.join(where)}" \
              " ORDER BY version LIMIT ?"
        by_ts = ts_from is not None or ts_until is not None
        ts_low = -math.inf if ts_from is None else ts_from
        ts_high = math.inf if ts_until is None else ts_until
        high = until if until is not None else 1 << 63
        rows: list[tuple[int, int, str, bytes]] = []
        cursor, scanned, reached = self._row_before(since), 0, since
        chunk = limit if matches is None else max(limit, 1000)
        while True:
            found = 0
            for version, topic_seq, event_type, body, n, sizes, ts_last in self.conn.execute(sql, [cursor, *params, chunk]):
                found += 1  # read lazily: a page may end inside the first of many run rows
                cursor = version
                if matches is not None and not matches(event_type):
                    reached = max(reached, min(version + (n or 1) - 1, high))
                    continue
                for event in (expand(version, topic_seq, event_type, body, n, sizes) if n else
                              ((version, topic_seq, event_type, body),)):
                    if event[0] <= since or event[0] > high:
                        continue
                    if by_ts and ts_last is not None and not ts_low <= event_ts(event[3]) < ts_high:
                        continue
                    rows.append(event)
                    reached = event[0]
                    if len(rows) == limit:
                        return rows, reached, False
                reached = max(reached, min(version + (n or 1) - 1, high))
            scanned += found
            if found < chunk:
                return rows, reached, True
            if matches is None or scanned >= max_scan:
                return rows, reached, False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
