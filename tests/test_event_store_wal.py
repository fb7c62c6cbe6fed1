"""The event log's WAL between checkpoints (broker/eventlog/store.py, WAL_BYTES): about that many
bytes whatever the page size of the file. New logs get 4 KiB pages; a log created before that keeps
its 16 KiB pages (SQLite fixes the size when the file is made), and its WAL must not grow four
times as far. On a real SQLite file, with WAL_BYTES made small so that a few MiB show it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from broker.eventlog import store as store_module
from broker.eventlog.store import EventStore

MiB = 1024 * 1024


def _old_log(path: Path, page_size: int) -> None:
    """A log file as the store made it before its pages were 4 KiB: page size set, then WAL."""
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS made (x)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("page_size", [None, 16384], ids=["new log", "log with 16 KiB pages"])
def test_the_wal_stays_within_its_bytes_whatever_the_page_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_size: int | None
) -> None:
    monkeypatch.setattr(store_module, "WAL_BYTES", MiB)
    path = tmp_path / "events.db"
    if page_size is not None:
        _old_log(path, page_size)
    store = EventStore(path)
    wal = Path(f"{path}-wal")
    body = os.urandom(1000)
    largest, version = 0, 0
    try:
        assert store.conn.execute("PRAGMA page_size").fetchone()[0] == (page_size or store_module.PAGE_SIZE)
        for _ in range(60):  # 6 MB of events, 100 a commit
            rows = []
            for _ in range(100):
                version += 1
                rows.append((version, "t:wal", version, float(version), "t", None, body, None, None))
            store.append(rows)
            largest = max(largest, wal.stat().st_size)
    finally:
        store.close()
    # A checkpoint comes at the first commit past WAL_BYTES: the WAL holds at most that and one
    # commit's pages (100 KB of bodies and their index pages here).
    assert largest <= MiB + MiB // 2, f"the WAL reached {largest} bytes"
