"""The session service and its storage: a disk that refuses writes, a database it may not write."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import sdk
from sdk.sessions import SessionClient
from tests.helpers import REPO, Part


def test_a_disk_that_refuses_writes_gets_a_clear_error_and_the_service_recovers(
    home: Path, session_service: Part
) -> None:
    """A full or failing disk: every write is refused with code ``storage`` (not ``internal``),
    logged once (not a traceback per request), nothing acknowledged is lost, and writes work
    again once the disk takes them. The fault is real: the service process may not grow any file
    (RLIMIT_FSIZE set from outside, as a full disk does to SQLite's write of the WAL)."""
    import resource

    with SessionClient.open(home, timeout=5.0) as c:
        kept = c.create("before")
        limits = resource.prlimit(session_service.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(session_service.pid, resource.RLIMIT_FSIZE, (1, limits[1]))
        try:
            codes = []
            for i in range(20):
                with pytest.raises(sdk.SessionError) as refused:
                    c.create(f"refused {i}")
                codes.append(refused.value.code)
            assert "disk" in str(refused.value) and "nothing was changed" in str(refused.value)
            assert c.get(kept.id) == kept  # reads still work
        finally:
            resource.prlimit(session_service.pid, resource.RLIMIT_FSIZE, limits)
        assert codes == ["storage"] * 20
        after = c.create("after")
        assert [s.title for s in c.list()] == ["after", "before"]
        assert c.get(after.id) == after
        stats = c.stats()
        assert stats["errors"] == {"storage": 20}
    log = session_service.log
    assert "Traceback" not in log
    assert "the session database accepts writes again after 20 refused" in log


def test_a_database_that_cannot_be_written_is_refused_at_start(home: Path) -> None:
    """SQLite opens a file it may not write read-only, and the service used to start and then fail
    every write as ``internal``; now it says at once what is wrong."""
    from broker.sessions.store import SessionStore

    db = home / "sessions.db"
    SessionStore(db).close()
    lock, unlock = (["chattr", "+i"], ["chattr", "-i"]) if os.geteuid() == 0 else (["chmod", "0444"], ["chmod", "0644"])
    if subprocess.run([*lock, str(db)], capture_output=True).returncode != 0:
        pytest.skip(f"{' '.join(lock)} is not available here (an immutable flag needs root on ext2/3/4)")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "broker", "session-service", "--home", str(home)],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )
    finally:
        subprocess.run([*unlock, str(db)], check=True)
    assert done.returncode == 1, done.stderr
    assert f"{db} cannot be written" in done.stderr and "Traceback" not in done.stderr


def test_a_database_turned_read_only_while_running_counts_as_storage() -> None:
    """SQLITE_READONLY (a file system remounted read-only after an error) is a refused write, code
    ``storage``, like a full disk: the real error, from a real read-only connection."""
    import tempfile

    from broker.sessions.service import refused_by_disk

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
        ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        with pytest.raises(sqlite3.OperationalError) as refused:
            ro.execute("INSERT INTO t VALUES (1)")
        ro.close()
    assert refused.value.sqlite_errorname.startswith("SQLITE_READONLY")
    assert refused_by_disk(refused.value)
