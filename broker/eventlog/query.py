"""The event log's request side: replay pages, summaries, imports, over msgpack requests.

Every request is a msgpack map with an ``op``; every reply is ``{ok: true, result}`` or
``{ok: false, code, message}`` — garbage included, and every refused request is counted.

Ops (``schemas/PROTOCOL.md`` has the field list):

- ``ping``, ``stats``
- ``replay``: ``since`` (exclusive), ``until`` (inclusive), ``patterns``, ``session_id``, ``ts_from``,
  ``ts_until``, ``limit`` -> ``{events: [[version, topic_seq, type, body], ...], next, done, last}``;
  ask again with ``since=next`` until ``done``.
- ``tail``: the last ``limit`` events matching ``patterns``/``session_id``/``source``, oldest first.
- ``summary``: counts by type, first/last activity, optional time buckets; for one session or all.
- ``import``: one session's rows ``[version, topic_seq, type, body]`` put back (``check``: only
  say whether they would be); the rules are in :mod:`broker.eventlog.imports`.
- ``delete_session``: drop the events of one session (what a session export can bring back).
- ``publishers``: for the identified events above ``since``, each publisher's highest number and
  its version (what a restarted broker needs to stamp no (publisher, number) twice).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

from broker.eventlog.imports import ImportRefused, SessionImports
from broker.eventlog.store import EventStore, event_ts, expand
from broker.eventlog.writer import LogWriter
from schemas.eventlog import MAX_INT, MAX_PAGE
from schemas.topics import InvalidType, check_pattern, compile_matcher, is_match_all

DEFAULT_PAGE = 5_000
MAX_PUBLISHERS = 100_000
"""Most publishers one ``publishers`` reply lists (the most recently seen)."""
MIN_BUCKET = 0.001
_EVENTS = "count(*) + coalesce(sum(n - 1), 0)"
"""How many events the rows matched hold (a run's row holds ``n``)."""
"""Shortest summary bucket, in seconds."""


class BadRequest(Exception):
    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


def _int(msg: dict[str, Any], key: str, default: int | None, *, minimum: int = 0) -> int | None:
    value = msg.get(key)
    if value is None:  # absent or nil: the default
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise BadRequest(f"{key!r} must be an integer from {minimum} to {MAX_INT}, not {value!r}")
    return value


def _float(msg: dict[str, Any], key: str, what: str = "seconds since the epoch") -> float | None:
    value = msg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{key!r} must be a finite number of {what}, not {value!r}")
    return float(value)


def _str(msg: dict[str, Any], key: str) -> str | None:
    value = msg.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def type_filter(patterns: Any) -> tuple[list[str] | None, Callable[[str], bool] | None]:
    """SQL-side exact types, or a Python matcher for wildcards; (None, None) for every event."""
    if patterns is None:
        patterns = []
    if not isinstance(patterns, list):
        raise BadRequest("'patterns' must be a list of strings")
    try:
        checked = [check_pattern(p) for p in patterns]
    except InvalidType as e:
        raise BadRequest(str(e)) from None
    if is_match_all(checked):
        return None, None
    if all("*" not in p for p in checked):
        return checked, None
    match = compile_matcher(checked)
    return None, lambda event_type: match(event_type.encode("utf-8"))


class LogQueries:
    """Answers requests against the store; the writer is consulted for live counters."""

    def __init__(self, store: EventStore, writer: LogWriter, retention: dict[str, Any]) -> None:
        self.store = store
        self.writer = writer
        self.retention = retention
        self.started = time.time()
        self.requests = 0
        self.bad_requests = 0
        self.trimmed = 0
        self.imports = SessionImports(store, lambda: writer.last_version)
        self.curve_refused: Callable[[], int] = lambda: 0
        """Connections the log's CURVE authenticator refused (set by the service that has one)."""
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self.op_ping,
            "stats": self.op_stats,
            "replay": self.op_replay,
            "tail": self.op_tail,
            "summary": self.op_summary,
            "import": self.op_import,
            "delete_session": self.op_delete_session,
            "publishers": self.op_publishers,
        }

    def handle(self, msg: Any) -> dict[str, Any]:
        """The reply map for one decoded request (never raises)."""
        self.requests += 1
        try:
            if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                raise BadRequest("request must be a map with an 'op'")
            handler = self._handlers.get(msg["op"])
            if handler is None:
                raise BadRequest(f"unknown op {msg['op']!r}; known: {sorted(self._handlers)}", "unknown_op")
            return {"ok": True, "result": handler(msg)}
        except BadRequest as e:
            self.bad_requests += 1
            return {"ok": False, "code": e.code, "message": str(e)}
        except Exception as e:  # a server never dies on input
            self.bad_requests += 1
            return {"ok": False, "code": "internal", "message": f"{type(e).__name__}: {e}"}

    def op_ping(self, _msg: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "last": self.writer.last_version}

    def op_stats(self, _msg: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        gap_records, missing = store.gap_totals()
        return {
            "pid": os.getpid(),
            "uptime": time.time() - self.started,
            "events": store.count(),
            "gap_records": gap_records,
            "missing": missing,
            "first": store.first_version(),
            "last": self.writer.last_version,
            **self.writer.stats(),
            "recent_gaps": store.gaps(),
            "trimmed": self.trimmed,
            "retention": self.retention,
            "requests": self.requests,
            "bad_requests": self.bad_requests,
            "curve_refused": self.curve_refused(),
            "path": str(store.path),
        }

    def op_replay(self, msg: dict[str, Any]) -> dict[str, Any]:
        since = _int(msg, "since", 0)
        until = _int(msg, "until", None)
        limit = min(_int(msg, "limit", DEFAULT_PAGE, minimum=1) or DEFAULT_PAGE, MAX_PAGE)
        types, matches = type_filter(msg.get("patterns"))
        rows, next_since, exhausted = self.store.page(
            since=since,
            until=until,
            limit=limit,
            types=types,
            matches=matches,
            session_id=_str(msg, "session_id"),
            ts_from=_float(msg, "ts_from"),
            ts_until=_float(msg, "ts_until"),
        )
        last = self.writer.last_version
        # Done once the scan passed the end of the range and the log has reached that far.
        done = exhausted and (until is None or last >= until)
        if exhausted and until is not None and last >= until:
            next_since = until
        return {
            "events": rows, "next": next_since, "done": done, "exhausted": exhausted, "last": last,
            "imported": self.imports.imported_among([r[0] for r in rows]),
        }

    def op_tail(self, msg: dict[str, Any]) -> dict[str, Any]:
        limit = min(_int(msg, "limit", 10, minimum=1) or 10, MAX_PAGE)
        types, matches = type_filter(msg.get("patterns"))
        session_id = _str(msg, "session_id")
        source = _str(msg, "source")
        where, params = [], []
        if types is not None:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if source is not None:
            where.append("source = ?")
            params.append(source)
        sql = "SELECT version, topic_seq, type, body, n, sizes FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY version DESC"
        picked: list[tuple[int, int, str, bytes]] = []
        for row in self.store.conn.execute(sql, params):
            if matches is None or matches(row[2]):
                picked.extend(reversed(expand(*row)) if row[4] else (row[:4],))
                if len(picked) >= limit:
                    del picked[limit:]
                    break
        picked.reverse()
        return {"events": picked, "last": self.writer.last_version}

    def op_summary(self, msg: dict[str, Any]) -> dict[str, Any]:
        session_id = _str(msg, "session_id")
        bucket = _float(msg, "bucket", "seconds")
        if bucket is not None and bucket < MIN_BUCKET:
            raise BadRequest(f"'bucket' must be at least {MIN_BUCKET:g} seconds, not {bucket!r}")
        ts_from, ts_until = _float(msg, "ts_from"), _float(msg, "ts_until")
        where, params = [], []
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        # Rows whose events share one ts are counted in SQL; a run's row with several (ts_last)
        # event by event, each with its own ts (store.py).
        exact, exact_params = [*where, "ts_last IS NULL"], list(params)
        spread, spread_params = [*where, "ts_last IS NOT NULL"], list(params)
        if ts_from is not None:
            exact.append("ts >= ?")
            exact_params.append(ts_from)
            spread.append("ts_last >= ?")
            spread_params.append(ts_from)
        if ts_until is not None:
            exact.append("ts < ?")
            exact_params.append(ts_until)
            spread.append("ts < ?")
            spread_params.append(ts_until)
        clause = " WHERE " + " AND ".join(exact)
        conn = self.store.conn
        count, first_ts, last_ts, first_v, last_v = conn.execute(
            f"SELECT {_EVENTS}, min(ts), max(ts), min(version), max(version + coalesce(n, 1) - 1)"
            f" FROM events{clause}", exact_params
        ).fetchone()
        by_type = dict(conn.execute(f"SELECT type, {_EVENTS} FROM events{clause} GROUP BY type", exact_params))
        buckets: dict[tuple[float, str], int] = {}
        if bucket is not None:
            for start, event_type, n in conn.execute(
                f"SELECT CAST(ts / ? AS INTEGER) * ? AS start, type, {_EVENTS} FROM events{clause}"
                " GROUP BY start, type", [bucket, bucket, *exact_params],
            ):
                buckets[(start, event_type)] = n
        low, high = (-math.inf if ts_from is None else ts_from), (math.inf if ts_until is None else ts_until)
        for row in conn.execute(
            "SELECT version, topic_seq, type, body, n, sizes FROM events WHERE " + " AND ".join(spread), spread_params
        ):
            for version, _seq, event_type, body in expand(*row):
                ts = event_ts(body)
                if not low <= ts < high:
                    continue
                count += 1
                by_type[event_type] = by_type.get(event_type, 0) + 1
                first_ts = ts if first_ts is None else min(first_ts, ts)
                last_ts = ts if last_ts is None else max(last_ts, ts)
                first_v = version if first_v is None else min(first_v, version)
                last_v = version if last_v is None else max(last_v, version)
                if bucket is not None:
                    key = (int(ts / bucket) * bucket, event_type)
                    buckets[key] = buckets.get(key, 0) + 1
        result: dict[str, Any] = {
            "session_id": session_id,
            "events": count,
            "by_type": dict(sorted(by_type.items())),
            "first_ts": first_ts,
            "last_ts": last_ts,
            "duration": (last_ts - first_ts) if count else 0.0,
            "first_version": first_v,
            "last_version": last_v,
            "imported": self.imports.imported_count(session_id),
        }
        if bucket is not None:
            result["bucket"] = bucket
            result["buckets"] = [[start, event_type, n] for (start, event_type), n in sorted(buckets.items())]
        return result

    def op_import(self, msg: dict[str, Any]) -> dict[str, Any]:
        session_id = _str(msg, "session_id")
        if not session_id:
            raise BadRequest("'session_id' is required: the session the imported events belong to")
        try:
            return self.imports.import_(session_id, msg.get("events"), check=msg.get("check") is True)
        except ImportRefused as e:
            raise BadRequest(str(e), e.code) from None

    def op_publishers(self, msg: dict[str, Any]) -> dict[str, Any]:
        since = _int(msg, "since", 0)
        limit = _int(msg, "limit", MAX_PUBLISHERS, minimum=1)
        assert since is not None and limit is not None
        return {"publishers": self.store.publishers(since=since, limit=min(limit, MAX_PUBLISHERS)), "last": self.writer.last_version}

    def op_delete_session(self, msg: dict[str, Any]) -> dict[str, Any]:
        session_id = _str(msg, "session_id")
        if not session_id:
            raise BadRequest("'session_id' is required")
        return {"deleted": self.imports.delete_session(session_id)}
