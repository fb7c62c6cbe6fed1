"""The supervisor behind ``pryxbus up``: runs every part of a stack as a child process, restarts the
ones that die (with backoff), and stops them all, in reverse order, on SIGINT/SIGTERM/SIGHUP.

The parts are a table (:data:`CHILDREN`): add a row to run another part. A child is *up* once it
prints its own ready line (``pryxbus COMMAND ready ...``) on stdout; the supervisor swallows those
lines (so that its own ``ready`` line, printed once every child is up, is the only one) and relays
every other line of the child to its stderr, prefixed with the child's name.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker.logs import json_line
from broker.process import lock_holder
from schemas.endpoints import Endpoints

log = logging.getLogger("pryxbus.up")


@dataclass(frozen=True)
class ChildSpec:
    """One part of the stack: ``python -m broker COMMAND --home HOME [--tcp HOST:PORT] [EXTRA...]``."""

    name: str
    command: str
    extra: tuple[str, ...] = ()
    takes_tcp: bool = True
    takes_await_log: bool = False
    """It is the broker: it gets ``--await-log`` (see :attr:`Waits.await_log`)."""
    lock: str = ""
    """The lock file the part holds in its home (``broker.lock``), if any."""
    sockets: tuple[str, ...] = ()
    """The endpoints it binds (fields of :class:`Endpoints`): their ipc files are removed after a
    stop, if this part ever was up under this supervisor (and not another process's part)."""
    connects: tuple[str, ...] = ()
    """The endpoints of other parts it connects to: on ``--tcp HOST:0`` it starts once a part that
    binds them has named their ports in its ready line."""

    @property
    def ready_line(self) -> str:
        """How the part's ready line starts. Only that counts: its errors may contain "ready" too
        ("Address already in use", "... is already running")."""
        return f"pryxbus {self.command} ready"


CHILDREN: tuple[ChildSpec, ...] = (
    ChildSpec(
        "broker", "broker", takes_await_log=True, lock="broker.lock",
        sockets=("publish", "subscribe", "control", "log_feed"),
    ),
    # after the broker: it subscribes there
    ChildSpec("event-log", "event-log", lock="event-log.lock", sockets=("log",), connects=("log_feed",)),
    ChildSpec("session-service", "session-service", lock="sessions.lock", sockets=("sessions",), connects=("publish",)),
)
"""Started in this order, stopped in reverse: the session service stops first, so the events it
publishes as it stops are still stamped and logged; the broker takes none once the log is gone."""

@dataclass(frozen=True)
class Waits:
    """How long the supervisor waits, and how often it retries: each is an option of ``pryxbus up``
    (tests pass small ones; the defaults suit a real stack)."""

    lock_wait: float = 10.0
    """Seconds ``up`` waits at start for a part left by an earlier ``up`` (killed with -9: its children
    got SIGTERM and may still be stopping, say an event log writing its last batch) to release the
    part's lock, before it starts its own (which then reports the one still running)."""
    start_attempts: int = 3
    """Times a child may exit before it was ever ready, while the stack starts, before ``up`` gives up
    (a part that cannot start, e.g. on a file that is not a database, will not start on a retry)."""
    backoff_first: float = 0.5
    """Seconds before the first restart of a child that died; doubled on each restart in a row."""
    backoff_max: float = 10.0
    """The longest wait between restarts."""
    stable_after: float = 30.0
    """A child up this long is healthy again: its next restart waits ``backoff_first``."""
    stop_timeout: float = 10.0
    """Seconds a child has to stop after SIGTERM before it is killed."""
    await_log: float = 3.0
    """Seconds a (re)started broker keeps publishers waiting for the event log (``--await-log``):
    after a broker crash, subscribers that reconnect sooner than the log would get events it misses."""


class StartFailed(RuntimeError):
    """A child exited ``Waits.start_attempts`` times before the stack was first ready."""


@dataclass
class Child:
    spec: ChildSpec
    argv: list[str]
    backoff: float
    """Seconds before its next restart."""
    proc: subprocess.Popen[str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    failed_starts: int = 0
    """Exits in a row without having been ready."""
    was_up: bool = False
    """It was ready at least once: it bound its sockets (so they are ours to clean up)."""
    last_line: str = ""
    """The child's last line of output (its error, when it could not start)."""


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself dies (Linux); elsewhere this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Supervisor:
    """Runs CHILDREN for one home. ``run()`` blocks until ``stop()`` (safe from a signal handler)."""

    def __init__(
        self,
        home: Path,
        *,
        tcp: str | None = None,
        children: tuple[ChildSpec, ...] = CHILDREN,
        waits: Waits = Waits(),
        child_args: dict[str, tuple[str, ...]] | None = None,
        log_format: str = "human",
    ) -> None:
        self.home = home
        self.tcp = tcp
        self.child_args = child_args or {}
        """Extra command-line arguments per child name (``{"broker": ("--lifecycle-events",)}``)."""
        self.log_format = log_format
        self.endpoints = Endpoints.parse_tcp(tcp) if tcp else Endpoints.ipc(home)
        """Where the parts listen: on ``--tcp HOST:0``, filled in from their ready lines."""
        self._choose_ports = bool(self.endpoints.unbound)
        self.waits = waits
        self.children = [Child(spec, [], backoff=waits.backoff_first) for spec in children]
        self._stop_requested = False
        """Set by ``stop()``: a plain flag, because a signal handler must take no lock. It runs in the
        main thread between two bytecodes, so ``threading.Event.set()`` there deadlocks whenever the
        signal lands while ``run()`` is inside that Event's own ``wait()`` (which holds its lock)."""

    def _argv(self, spec: ChildSpec) -> list[str]:
        argv = [sys.executable, "-m", "broker", spec.command, "--home", str(self.home)]
        if self.tcp and spec.takes_tcp:
            argv += ["--tcp", self.tcp]
        if spec.takes_await_log:
            argv += ["--await-log", f"{self.waits.await_log:g}"]
        if self._choose_ports and spec.takes_tcp:  # the ports bound so far: a restart binds its own again
            unbound = self.endpoints.unbound
            argv += [f"--endpoint={name}={e}" for name, e in self.endpoints.names().items() if name not in unbound]
        return argv + list(spec.extra) + list(self.child_args.get(spec.name, ()))

    def stop(self) -> None:
        """Ask ``run()`` to stop its children and return, within one tick (safe from a signal handler)."""
        self._stop_requested = True

    def _stopped_after(self, seconds: float) -> bool:
        """Wait ``seconds`` unless ``stop()`` was called; whether it has been, then."""
        if not self._stop_requested:
            time.sleep(seconds)  # a signal's handler runs during it; the loop sees its flag next tick
        return self._stop_requested

    # -- children ----------------------------------------------------------------------------

    def _can_start(self, child: Child) -> bool:
        """Whether every endpoint the child connects to is known (always, but on ``--tcp HOST:0``)."""
        return not set(child.spec.connects) & set(self.endpoints.unbound)

    def _learn_endpoints(self, line: str) -> None:
        """Take the ports a part's ready line names (``publish=tcp://127.0.0.1:40123 ...``)."""
        named = dict(word.split("=", 1) for word in line.split() if "=" in word)
        self.endpoints = self.endpoints.with_(**{name: named[name] for name in self.endpoints.unbound if name in named})

    def _spawn(self, child: Child) -> None:
        child.argv = self._argv(child.spec)
        child.ready.clear()
        child.started = time.monotonic()
        child.restart_at = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child.proc = subprocess.Popen(
            child.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only: it stops them in order
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        threading.Thread(target=self._relay, args=(child, child.proc), daemon=True).start()

    def _relay(self, child: Child, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not child.ready.is_set() and line.startswith(child.spec.ready_line):
                log.info("%s is up (pid %d)", child.spec.name, proc.pid)
                if self._choose_ports:
                    self._learn_endpoints(line)
                child.failed_starts = 0
                child.was_up = True
                child.ready.set()
                continue
            child.last_line = line.strip() or child.last_line
            if self.log_format != "json":
                sys.stderr.write(f"[{child.spec.name}] {line}")
            elif line.startswith("{"):
                sys.stderr.write(line)  # the child's own JSON log line
            else:
                sys.stderr.write(json_line(line.rstrip("\n"), logger=f"pryxbus.{child.spec.name}") + "\n")
            sys.stderr.flush()

    def _check(self, child: Child, starting: bool) -> None:
        """Restart a child that exited (after its backoff).

        Raises:
            StartFailed: while the stack is ``starting``, the child exited ``waits.start_attempts`` times
                without ever being ready.
        """
        proc = child.proc
        now = time.monotonic()
        if proc is not None and proc.poll() is not None and child.restart_at is None:
            if not child.ready.is_set():
                child.failed_starts += 1
                if starting and child.failed_starts >= self.waits.start_attempts:
                    raise StartFailed(
                        f"{child.spec.name} could not start (exited with status {proc.returncode},"
                        f" {child.failed_starts} times): {child.last_line or 'no output'}"
                    )
            if now - child.started > self.waits.stable_after:
                child.backoff = self.waits.backoff_first
            log.warning(
                "%s (pid %d) exited with status %s; restarting it in %.1fs (restart %d)",
                child.spec.name, proc.pid, proc.returncode, child.backoff, child.restarts + 1,
            )
            child.restart_at = now + child.backoff
            child.backoff = min(child.backoff * 2, self.waits.backoff_max)
        if child.restart_at is not None and now >= child.restart_at:
            child.restarts += 1
            self._spawn(child)

    def _terminate(self, child: Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.waits.stop_timeout)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not stop in %gs; killing it", child.spec.name, proc.pid, self.waits.stop_timeout)
            proc.kill()
            proc.wait()

    def _await_locks(self) -> None:
        """Wait (at most ``waits.lock_wait`` seconds, or until ``stop()``) until no earlier process holds the
        lock of a part we are about to start."""
        deadline = time.monotonic() + self.waits.lock_wait
        told: set[str] = set()
        for child in self.children:
            if not child.spec.lock:
                continue
            while (pid := lock_holder(self.home / child.spec.lock)) is not None:
                if child.spec.name not in told:
                    told.add(child.spec.name)
                    log.warning(
                        "waiting for the %s left running in %s (pid %s) to stop", child.spec.name, self.home, pid
                    )
                if time.monotonic() >= deadline or self._stopped_after(0.05):
                    return

    # -- the loop ----------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None, tick: float = 0.1) -> None:
        """Start every child, call ``on_ready()`` once all are up, supervise until ``stop()``.

        Raises:
            StartFailed: a child could not start (see ``Waits.start_attempts``); every child is stopped first.
        """
        announced = False
        try:
            self._await_locks()
            while not self._stop_requested:
                for child in self.children:
                    if child.proc is None:  # not started yet: it waits for the ports it connects to
                        if self._can_start(child):
                            self._spawn(child)
                        continue
                    self._check(child, starting=not announced)
                if not announced and all(c.ready.is_set() for c in self.children):
                    announced = True
                    if on_ready is not None:
                        on_ready()
                self._stopped_after(tick)
        finally:
            for child in reversed(self.children):
                self._terminate(child)
            for child in self.children:  # a child killed -9 leaves its socket files
                if not child.was_up:  # not those of a part another process runs in this home
                    continue
                for name in child.spec.sockets:
                    endpoint = getattr(self.endpoints, name)
                    if endpoint.startswith("ipc://"):
                        Path(endpoint[len("ipc://"):]).unlink(missing_ok=True)
