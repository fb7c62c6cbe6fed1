"""Test helpers shared by every test module: server processes, waiting on a condition without
sleeping blindly, raw-socket utilities, and running the ``pryxbus`` command."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import zmq
from xprocess import ProcessStarter

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
"""The environment of a child ``python``: the repo importable, whatever the current directory."""
_names = itertools.count()


@dataclass
class Part:
    """A running server process started by :func:`start_part`."""

    name: str
    pid: int
    home: Path
    xprocess: object

    def stop(self) -> None:
        """SIGTERM, and wait (what a clean shutdown looks like)."""
        self.xprocess.getinfo(self.name).terminate()

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        self.signal(signal.SIGKILL)
        self.xprocess.getinfo(self.name).terminate()

    @property
    def log(self) -> str:
        return Path(self.xprocess.getinfo(self.name).logpath).read_text(errors="replace")


def start_part(xprocess, home: Path, *args: str, pattern: str = "ready", name: str | None = None) -> Part:
    """Start ``pryxbus ARGS --home HOME`` and wait for its ready line."""
    # The pid keeps names unique across concurrent pytest runs sharing one xprocess cache: xprocess
    # would otherwise "reuse" another run's live process of the same name instead of starting ours.
    name = name or f"{args[0]}-{os.getpid()}-{next(_names)}"
    command = [sys.executable, "-u", "-m", "broker", *args, "--home", str(home)]

    ready_pattern = pattern

    class Starter(ProcessStarter):
        timeout = 30
        terminate_on_interrupt = True
        max_read_lines = 500
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = command
        pattern = ready_pattern

    pid, _log = xprocess.ensure(name, Starter)
    return Part(name=name, pid=pid, home=home, xprocess=xprocess)



def logged_events(home: Path, type_like: str = "%") -> list[tuple[int, str, bytes]]:
    """``(version, type, body)`` of the events in ``HOME/events.db`` whose type is LIKE
    ``type_like``, by version, a run's row read as its events (broker/eventlog/store.py)."""
    import sqlite3

    from broker.eventlog.store import expand

    db = sqlite3.connect(f"file:{home / 'events.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT version, topic_seq, type, body, n, sizes FROM events WHERE type LIKE ?"
                          " ORDER BY version", (type_like,)).fetchall()
    finally:
        db.close()
    return [(version, event_type, bytes(body)) for row in rows for version, _seq, event_type, body in expand(*row)]


def logged_numbers(home: Path, publisher: int) -> list[tuple[int, int]]:
    """``(version, number)`` of every event of ``publisher`` (a u64 id) in ``HOME/events.db``, by
    version: a run's row names its last event's number, the ones before it numbered down from it."""
    import sqlite3

    signed = publisher - (1 << 64) if publisher >= 1 << 63 else publisher
    db = sqlite3.connect(f"file:{home / 'events.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT version, pub_num, n FROM events WHERE pub_id = ? ORDER BY version", (signed,))
        return [(version + i, number - (n or 1) + 1 + i) for version, number, n in rows for i in range(n or 1)]
    finally:
        db.close()


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "condition",
) -> T:
    """Call ``probe()`` until ``done(value)``; return that value, or fail showing the last value seen.

    The short wait between probes is a poll interval, not a synchronisation sleep.
    """
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        value = probe()
        if done(value):
            return value
        seen.append(value)
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g}s; last seen: {seen[-1]!r}")
        threading.Event().wait(interval)  # sync-ok: polling interval between probes


def control(ctx: zmq.Context, endpoint: str, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """One raw control request (REQ + msgpack, as PROTOCOL.md §8 says); returns the whole reply."""
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb(request, use_bin_type=True))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise AssertionError(f"no control reply to {request!r} within {timeout:g}s")
        return msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()


def stats(ctx: zmq.Context, endpoint: str) -> dict[str, Any]:
    reply = control(ctx, endpoint, {"op": "stats"})
    assert reply["ok"], reply
    return reply["result"]


def wait_stats(
    ctx: zmq.Context, endpoint: str, done: Callable[[dict[str, Any]], bool], *, what: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Poll the broker's stats until ``done(stats)``."""
    return wait_for(lambda: stats(ctx, endpoint), done, timeout=timeout, what=what)


def raw_publisher(ctx: zmq.Context, endpoint: str, *, timeout: float = 5.0) -> zmq.Socket:
    """An XPUB publisher connected to the broker and ready to send (PROTOCOL.md §4)."""
    sock = ctx.socket(zmq.XPUB)
    sock.linger = 1000
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.sndtimeo = int(timeout * 1000)
    sock.connect(endpoint)
    assert sock.poll(int(timeout * 1000), zmq.POLLIN), "the broker's subscription never arrived"
    assert sock.recv() == b"\x01"
    return sock


def wait_logged(bus: Any, version: int) -> dict[str, Any]:
    """Poll the event log's stats until it holds ``version``."""
    return wait_for(lambda: bus.log_stats(), lambda s: s["last"] >= version, what=f"log at version {version}")


def collect(sub: Any, n: int, *, timeout: float = 5.0) -> list[Any]:
    """Receive exactly ``n`` events from an SDK subscription (each receive has a timeout)."""
    return [sub.recv(timeout=timeout) for _ in range(n)]


def python_process(code: str, *args: str, stdin: bool = False) -> "subprocess.Popen[str]":
    """Start ``python -c code ARGS`` with the repo importable; stdout/stderr (and stdin) piped, text."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=ENV,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def finish(proc: "subprocess.Popen[str]", *, timeout: float = 20.0) -> str:
    """Wait for a helper process, assert it exited 0, return its stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"helper process failed ({proc.returncode}):\n{err}"
    return out


PUBLISHER = """
import sys, sdk
home, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
types = sys.argv[4:] or ["load:event"]
with sdk.connect(home, name=name) as bus:
    for i in range(n):
        bus.publish(types[i % len(types)], {"pub": name, "i": i})
"""
"""A publisher process: ``python -c PUBLISHER HOME NAME N [TYPE...]`` publishes N events and exits."""


def raw_request(home: Path, body: bytes, *, timeout: float = 5.0) -> dict:
    """One raw request to the session service of ``home`` (any bytes); its decoded reply."""
    from schemas.endpoints import Endpoints

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(Endpoints.for_home(home).sessions)
        sock.send(body)
        assert sock.poll(int(timeout * 1000), zmq.POLLIN), f"no reply to {body[:40]!r}"
        return msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()


# -- the pryxbus command ---------------------------------------------------------------------------


def pryxbus(*args: str, home: Path | None = None, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``pryxbus ARGS [--home HOME]`` as a process (for commands that talk to servers or must exit)."""
    where = ("--home", str(home)) if home is not None else ()
    return subprocess.run(
        [sys.executable, "-m", "broker", *args, *where],
        input=stdin, capture_output=True, text=True, timeout=timeout, env=ENV,
    )


@dataclass
class Ran:
    """What a ``pryxbus`` command run in this process did."""

    returncode: int
    stdout: str
    stderr: str


def cli(capsys: Any, *args: str, home: Path | None = None) -> Ran:
    """``pryxbus ARGS [--home HOME]`` in this process, without an interpreter's start-up: for usage
    errors, help, validation and client commands (never a server: it would configure this process's
    logging and signals); ``capsys`` is pytest's fixture."""
    from broker.cli import main

    where = ["--home", str(home)] if home is not None else []
    capsys.readouterr()
    try:
        code = main([*args, *where])
    except SystemExit as e:  # argparse's usage errors and --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return Ran(code, out, err)


# -- pryxbus up ------------------------------------------------------------------------------------

FAST_UP = ("--lock-wait", "0", "--restart-backoff", "0.05", "--stop-timeout", "5")
"""Options for an ``up`` a test expects to give up: no waiting for locks, quick retries."""


def pid_of(home: Path, part: str) -> int:
    return int((home / f"{part}.lock").read_text().strip() or 0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def default_sighup() -> None:
    """In the child before it runs up: SIGHUP back to its default, whatever the test run inherited
    (under ``nohup`` or a CI runner that ignores it, up would rightly keep ignoring it)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class Up:
    """``pryxbus up`` as a child of the test, its output collected by a reader thread. It starts with
    SIGHUP at its default unless ``preexec_fn`` says otherwise."""

    def __init__(self, home: Path, *args: str, cwd: Path | None = None, preexec_fn=None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "broker", "up", "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            preexec_fn=preexec_fn or default_sighup,
            env=ENV,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_line(self, text: str, timeout: float = 30.0) -> str:
        """The first output line containing ``text``; fails if up exits or ``timeout`` passes first."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(text in x for x in self.lines) or self._eof, timeout=timeout
            )
            hit = next((x for x in self.lines if text in x), None)
            if hit is not None:
                return hit
            why = "exited" if found else f"printed nothing with {text!r} within {timeout:g}s"
            raise AssertionError(f"pryxbus up {why}:\n" + "".join(self.lines))

    def wait_ready(self, timeout: float = 30.0) -> str:
        return self.wait_line("ready", timeout)

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            why = f"pryxbus up did not exit within {timeout:g}s of signal {sig}"
            raise AssertionError(f"{why}:\n{self.output}") from None
        self._reader.join(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port_base(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        socks = []
        try:
            with socket.socket(family) as probe:
                probe.bind((host, 0))
                base = probe.getsockname()[1]
            if base > 65000:
                continue
            for off in range(6):  # publish .. log_feed
                s = socket.socket(family)
                socks.append(s)
                s.bind((host, base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no six consecutive free loopback ports")
