"""Running one server part as a process: a home lock, signal handling, and the ready line."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class AlreadyRunning(RuntimeError):
    """Another process already holds this lock (a part's in its home, or a file's)."""


_NAMES = {"up": "pryxbus up", "broker": "a broker", "sessions": "a session service", "event-log": "an event log"}
"""How a part is named in the message a second one gets."""


@contextmanager
def home_lock(home: Path, part: str) -> Iterator[None]:
    """Hold ``HOME/PART.lock`` for the life of the process, so two brokers never share a home."""
    with path_lock(home / f"{part}.lock", f"{_NAMES.get(part, part)} is already running in {home}"):
        yield


@contextmanager
def path_lock(path: Path, taken: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created, 0600, holding our pid) for the block.

    Raises:
        AlreadyRunning: another process holds it; the message is ``taken`` and that process's pid.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyRunning(f"{taken} (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_holder(path: Path) -> str | None:
    """The pid (as written in it) of the process holding the lock at ``path``, or None if nobody
    holds it. Takes the lock for an instant when it is free; never creates the file."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        return None
    finally:
        os.close(fd)  # releases the lock if we took it


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop()`` on SIGINT, SIGTERM or SIGHUP for the duration of the block.

    SIGHUP is what a closed terminal or ssh session sends: by default it kills the process on the
    spot (``up`` without stopping its children in order, a part without removing its socket files).
    A SIGHUP ignored from the start stays ignored: that is how ``nohup`` keeps a process running.
    """
    signals = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        stop()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def announce(line: str, stream: IO[str] = sys.stdout) -> None:
    """Print a readiness (or status) line and flush it at once: supervisors and tests wait on it."""
    print(line, file=stream, flush=True)
