"""The start-up check of a server's SQLite file: a damaged or emptied database is refused, not used.

SQLite opens a damaged file without complaint and fails (or answers wrongly) only when a query
reaches the bad page; and it takes a 0-byte file for a new database. So before a server opens its
file it runs SQLite's own ``PRAGMA quick_check`` and refuses an existing file that is empty: a
truncated log or session table must never turn silently into an empty one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

_SHOWN = 3
"""Lines of quick_check's report quoted in the refusal (a damaged page can produce thousands)."""


class DamagedDatabase(sqlite3.DatabaseError):
    """The file exists but is not a sound SQLite database; the message says what to do."""


def _advice(path: Path, holds: str) -> str:
    return (
        f"Stop every pryxbus part using it, then restore it from a backup, or salvage what is readable"
        f" (sqlite3 {path} .recover | sqlite3 recovered.db) and put that in its place; or move it away"
        f" to start again without the {holds} it held"
    )


def check_database(path: str | Path, holds: str) -> None:
    """Refuse ``path`` if it exists and is empty, not SQLite, or fails ``PRAGMA quick_check``.

    ``holds`` names the contents for the message (``"sessions"``, ``"logged events"``). A missing
    file passes: the server creates a new database.

    Raises:
        DamagedDatabase: the file is unusable; nothing was written to it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        raise DamagedDatabase(
            f"{path} is empty (0 bytes): a database that existed is not started again as a new one,"
            f" since it may have been truncated. {_advice(path, holds)}"
        )
    # Read-write, as the server is about to open it (a read-only open of a WAL file without its
    # -shm cannot read); quick_check itself writes nothing.
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as e:
        raise DamagedDatabase(f"{path} cannot be opened: {e}") from None
    try:
        report = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchmany(_SHOWN)]
    except sqlite3.DatabaseError as e:
        report = [str(e)]
    finally:
        conn.close()
    if report != ["ok"]:
        lines = "; ".join([line for row in report for line in row.splitlines()][:_SHOWN])
        raise DamagedDatabase(f"{path} is damaged (SQLite quick_check: {lines}). {_advice(path, holds)}")
