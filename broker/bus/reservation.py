"""Versions a broker has reserved, kept in ``HOME/broker.version`` so a restart never reuses one.

Before stamping past its reservation the broker writes (and fsyncs) a mark ``STEP`` versions
ahead, so the file is touched once per ``STEP`` events, outside the per-message loop. A broker
killed with SIGKILL may have stamped events the event log never wrote; the next broker starts
after ``max(reserved mark, last logged version)`` and so never hands out one of those versions
again. A clean stop records the exact last version, so the count continues without a jump.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE = "broker.version"
STEP = 1 << 20
"""Versions reserved per write: the jump after a crash; one fsync per this many events."""


def read_mark(home: str | Path) -> int:
    try:
        return int((Path(home) / FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def first_version(home: str | Path) -> int:
    """Where a broker starting in ``home`` begins: after everything reserved or logged."""
    from broker.eventlog.store import last_logged_version  # sqlite_utils: 0.1 s a broker start does not need

    return max(read_mark(home), last_logged_version(home)) + 1


class Reservation:
    """The reserved-version mark of one broker run."""

    def __init__(self, home: str | Path, *, step: int = STEP) -> None:
        self.path = Path(home) / FILE
        self.step = step
        self.mark = read_mark(home)

    def reserve(self, through: int) -> int:
        """Durably reserve every version up to at least ``through``; returns the new mark."""
        self.write(max(through, self.mark) + self.step)
        return self.mark

    def write(self, mark: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{mark}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.mark = mark
