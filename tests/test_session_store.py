"""SessionStore semantics on a real SQLite file, without sockets (issue 3)."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from broker.sessions.store import (
    KEPT_REPLIES,
    PRUNE_REPLIES,
    SCHEMA_VERSION,
    SchemaTooNew,
    SessionStore,
    StoreError,
)
from schemas.sessions import MAX_TITLE_LENGTH, ProtocolError, decode_cursor, format_ts, parse_ts


@pytest.fixture
def store(tmp_path: Path):
    with SessionStore(tmp_path / "s.db") as s:
        yield s


def test_pragmas_on_every_connection(store: SessionStore) -> None:
    conn = store.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.schema_version() == SCHEMA_VERSION


def test_create_makes_a_uuid4_and_utc_times(store: SessionStore) -> None:
    written = store.create("Chat with User")
    s = written.session
    assert written.event == "created"
    assert uuid.UUID(s["id"]).version == 4
    assert s["title"] == "Chat with User"
    assert s["created_at"] == s["updated_at"]
    assert parse_ts(s["created_at"]).utcoffset().total_seconds() == 0
    assert store.get(s["id"]) == s


def test_get_unknown_is_not_found(store: SessionStore) -> None:
    with pytest.raises(StoreError) as e:
        store.get("nope")
    assert e.value.code == "not_found"


def test_create_with_existing_id(store: SessionStore) -> None:
    first = store.create("t", session_id="a").session
    again = store.create("t", session_id="a")  # a retried create: same answer, nothing written
    assert (again.session, again.event) == (first, None)
    with pytest.raises(StoreError) as e:
        store.create("other", session_id="a")
    assert e.value.code == "conflict"
    assert store.count() == 1


def test_ensure_creates_then_keeps_title_and_touches(store: SessionStore) -> None:
    made = store.ensure("s-1", "first")
    assert made.event == "created"
    again = store.ensure("s-1", "second")
    assert again.event == "updated"
    assert again.session["title"] == "first"
    assert again.session["created_at"] == made.session["created_at"]
    assert again.session["updated_at"] > made.session["updated_at"]


def test_list_order_tiebreak_cap_and_pages(store: SessionStore) -> None:
    ids = [store.create(f"t{i}").session["id"] for i in range(105)]
    page = store.list(1000)
    assert len(page.sessions) == 100
    assert [s["id"] for s in page.sessions] == ids[::-1][:100]  # most recently updated first
    rest = store.list(100, cursor=decode_cursor(page.next_cursor))
    assert [s["id"] for s in rest.sessions] == ids[::-1][100:]
    assert rest.next_cursor is None
    assert [s["id"] for s in store.list(3, offset=102).sessions] == ids[::-1][102:]
    store.touch(ids[0])
    assert store.list(1).sessions[0]["id"] == ids[0]


def test_list_ties_are_broken_by_id_descending(store: SessionStore) -> None:
    with store.transaction():
        for sid in ["b", "c", "a"]:
            store.db.conn.execute(
                "INSERT INTO sessions VALUES (?, 't', '2020-01-01T00:00:00.000000+00:00',"
                " '2020-01-01T00:00:00.000000+00:00')",
                (sid,),
            )
    assert [s["id"] for s in store.list().sessions] == ["c", "b", "a"]
    page = store.list(2)
    assert [s["id"] for s in store.list(2, cursor=decode_cursor(page.next_cursor)).sessions] == ["a"]


def test_rename_touch_delete(store: SessionStore) -> None:
    s = store.create("old").session
    renamed = store.rename(s["id"], "new")
    assert (renamed.event, renamed.session["title"]) == ("updated", "new")
    assert renamed.session["updated_at"] > s["updated_at"]
    touched = store.touch(s["id"])
    assert touched.session["updated_at"] > renamed.session["updated_at"]
    deleted = store.delete(s["id"])
    assert (deleted.event, deleted.session) == ("deleted", touched.session)
    for op in (lambda: store.rename(s["id"], "x"), lambda: store.touch(s["id"]), lambda: store.delete(s["id"])):
        with pytest.raises(StoreError) as e:
            op()
        assert e.value.code == "not_found"


@pytest.mark.parametrize(
    "title", ["'); DROP TABLE sessions;--", "日本語 🎉 \u202e", "nul\x00inside", "", "x" * MAX_TITLE_LENGTH]
)
def test_titles_round_trip_exactly(store: SessionStore, title: str) -> None:
    s = store.create(title).session
    assert store.get(s["id"])["title"] == title
    assert store.count() == 1


def test_limits(store: SessionStore) -> None:
    with pytest.raises(ProtocolError) as e:
        store.create("x" * (MAX_TITLE_LENGTH + 1))
    assert e.value.code == "too_long"
    with pytest.raises(ProtocolError) as e:
        store.ensure("", "t")
    assert e.value.code == "bad_request"


def test_a_batch_commits_together_or_not_at_all(store: SessionStore) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.create("a", session_id="a")
            store.create("b", session_id="b")
            raise RuntimeError("boom")
    assert store.count() == 0
    with store.transaction():
        store.create("a", session_id="a")
        store.create("b", session_id="b")
    assert store.count() == 2


def test_committed_changes_are_seen_by_another_connection(tmp_path: Path) -> None:
    with SessionStore(tmp_path / "s.db") as a, SessionStore(tmp_path / "s.db") as b:
        s = a.create("shared").session
        assert b.get(s["id"]) == s
        assert b.ensure(s["id"], "other").session["title"] == "shared"


def test_seed_era_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(  # the seed's schema, as the Go store created it
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
        " created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,"
        " updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    conn.execute("INSERT INTO sessions VALUES ('old-1', 'Old', '2024-01-02 03:04:05', '2024-01-02 03:04:06')")
    conn.execute("INSERT INTO sessions VALUES ('old-2', 'Older', '2023-05-06 07:08:09', '2023-05-06 07:08:09')")
    conn.commit()
    conn.close()
    with SessionStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.get("old-1") == {
            "id": "old-1",
            "title": "Old",
            "created_at": "2024-01-02T03:04:05.000000+00:00",
            "updated_at": "2024-01-02T03:04:06.000000+00:00",
        }
        new = store.create("New").session
        assert [s["id"] for s in store.list().sessions] == [new["id"], "old-1", "old-2"]
        indexes = {row[1] for row in store.db.conn.execute("PRAGMA index_list(sessions)")}
        assert "sessions_by_updated" in indexes
    with SessionStore(path) as again:  # reopening does not migrate twice
        assert again.schema_version() == SCHEMA_VERSION
        assert again.db.conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_version_1_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with SessionStore(path) as store:
        store.create("kept", session_id="k")
        store.db.conn.execute("DROP INDEX sessions_by_updated")
        store.db.conn.execute("DELETE FROM schema_version WHERE version > 1")
    with SessionStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.get("k")["title"] == "kept"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with SessionStore(path) as store:
        store.db.conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew):
        SessionStore(path)


def test_version_2_database_is_upgraded_and_keeps_write_replies(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)  # exactly what version 2 left on disk
    conn.executescript(
        "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL);"
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
        " created_at TEXT NOT NULL, updated_at TEXT NOT NULL);"
        "CREATE INDEX sessions_by_updated ON sessions (updated_at DESC, id DESC);"
        "INSERT INTO schema_version VALUES (1, '2025-01-01T00:00:00.000000+00:00'),"
        " (2, '2025-01-01T00:00:00.000000+00:00');"
        "INSERT INTO sessions VALUES ('k', 'kept', '2025-01-01T00:00:00.000000+00:00',"
        " '2025-01-01T00:00:00.000000+00:00');"
    )
    conn.close()
    with SessionStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.get("k")["title"] == "kept"
        with store.transaction():
            store.remember_reply("text-rid", b"one")
            store.remember_reply(b"text-rid", b"two")  # a bytes rid is another rid
    with SessionStore(path) as store:
        assert store.remembered_reply("text-rid") == b"one"
        assert store.remembered_reply(b"text-rid") == b"two"
        assert store.remembered_reply("never") is None
        assert store.integrity_check() == "ok"


def test_remembered_write_replies_are_bounded(store: SessionStore) -> None:
    total = KEPT_REPLIES + 3 * PRUNE_REPLIES
    with store.transaction():
        for i in range(total):
            store.remember_reply(f"r{i}", b"%d" % i)
    kept = store.db.conn.execute("SELECT count(*) FROM write_replies").fetchone()[0]
    assert KEPT_REPLIES <= kept < KEPT_REPLIES + PRUNE_REPLIES
    assert store.remembered_reply("r0") is None
    assert store.remembered_reply(f"r{total - KEPT_REPLIES}") == b"%d" % (total - KEPT_REPLIES)


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-id", "overwritten"])
def test_writes_after_a_restore_from_ahead_stay_newer(store: SessionStore, overwrite: bool) -> None:
    """A restored session may be dated ahead of this clock (another machine's, within the allowed
    skew); the writes after it are still later, so ``list`` keeps the order of changes."""
    if overwrite:
        store.create("old", session_id="s-restored")
    ahead = format_ts(datetime.now(timezone.utc) + timedelta(seconds=50))
    store.restore(
        {"id": "s-restored", "title": "from ahead", "created_at": ahead, "updated_at": ahead}, overwrite=overwrite
    )
    created = store.create("after the restore").session
    assert created["updated_at"] > ahead
    assert [s["id"] for s in store.list(2).sessions] == [created["id"], "s-restored"]
