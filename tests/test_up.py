"""``pryxbus up``: the supervised stack starts, serves, restarts a dead part and stops cleanly (issue 3)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import sdk
from schemas.endpoints import Endpoints
from sdk.sessions import SessionClient
from tests.conftest import REPO
from tests.helpers import wait_for


def pid_of(home: Path, part: str) -> int:
    return int((home / f"{part}.lock").read_text().strip() or 0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Up:
    """``pryxbus up`` as a child of the test, its output collected."""

    def __init__(self, home: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "broker", "up", "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.lines: list[str] = []

    def wait_ready(self) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends (and fails below) if up exits first
            self.lines.append(line)
            if "ready" in line:
                return line
        raise AssertionError("pryxbus up exited before it was ready:\n" + "".join(self.lines))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.lines.append(out)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def up(home: Path):
    running = Up(home)
    yield running
    running.kill()


def test_up_serves_events_and_sessions_and_stops_cleanly(home: Path, up: Up) -> None:
    line = up.wait_ready()
    assert line.startswith("pryxbus up ready")
    with sdk.connect(home, name="t", timeout=5) as bus:
        with bus.subscribe("channel:*", "session:created") as sub:
            bus.publish("channel:message", {"text": "hi"})
            # session:created comes on the session service's own connection, and a broker that
            # finds both waiting takes turns between connections: it may stamp that one first.
            # The order of the two is not what this shows; receive ours before asking for theirs.
            events = [sub.recv(timeout=5)]
            s = bus.sessions.create("through up")
            events.append(sub.recv(timeout=5))
        assert [e.type for e in events] == ["channel:message", "session:created"]
        assert events[1].payload["id"] == s.id
        assert bus.sessions.get(s.id) == s
    children = [pid_of(home, "broker"), pid_of(home, "sessions")]
    assert all(map(alive, children))
    assert up.stop() == 0
    output = "".join(up.lines)
    assert sum("ready" in x for x in output.splitlines()) == 1, output
    assert not any(map(alive, children))
    assert sorted(p.name for p in home.glob("*.sock")) == []
    assert "pryxbus up stopped" in output


def test_up_restarts_a_killed_part(home: Path, up: Up) -> None:
    up.wait_ready()
    with SessionClient.open(home, timeout=1.0, retries=10) as sessions:
        before = sessions.create("before the crash")
        old = pid_of(home, "sessions")
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: pid_of(home, "sessions"), lambda p: p not in (0, old), timeout=15, what="a new pid")
        assert sessions.get(before.id) == before  # retried until the restarted service answered
        assert alive(new)
    old_broker = pid_of(home, "broker")
    os.kill(old_broker, signal.SIGKILL)
    wait_for(lambda: pid_of(home, "broker"), lambda p: p not in (0, old_broker), timeout=15, what="a new broker")
    with sdk.connect(home, name="t", timeout=5) as bus, bus.subscribe("trace:event") as sub:
        bus.publish("trace:event", {"name": "after restart"})
        assert sub.recv(timeout=5).payload == {"name": "after restart"}
    assert up.stop() == 0
    output = "".join(up.lines)
    assert "session-service (pid %d) exited with status -9; restarting" % old in output
    assert "broker (pid %d) exited with status -9; restarting" % old_broker in output


def test_after_a_broker_crash_the_log_misses_nothing_a_subscriber_gets(home: Path, up: Up) -> None:
    """The restarted broker takes events only once the event log has subscribed again (--await-log,
    which up passes): a subscriber that reconnects sooner no longer gets events the log lacks."""
    up.wait_ready()
    with sdk.connect(home, name="t", timeout=10) as bus, bus.subscribe("load:*", policy="count") as sub:
        bus.publish("load:tick", {"n": -1})
        assert sub.recv(timeout=5).payload == {"n": -1}
        old = pid_of(home, "broker")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: pid_of(home, "broker"), lambda p: p not in (0, old), timeout=15, what="a new broker")
        for n in range(300):  # blocks until the new broker takes events
            bus.publish("load:tick", {"n": n})
        got = []
        while not got or got[-1].payload["n"] != 299:
            got.append(sub.recv(timeout=10))
        logged = wait_for(
            lambda: [e.version for e in bus.replay("load:*")],
            lambda v: v and v[-1] >= got[-1].version,
            timeout=10,
            what="the log holding the last event",
        )
    assert {e.version for e in got} - set(logged) == set()
    assert "the event log subscribed; taking events" in "".join(up.lines)


def free_port_base() -> int:
    for _ in range(50):
        socks = []
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                base = probe.getsockname()[1]
            if base > 65000:
                continue
            for off in range(6):  # publish .. log_feed
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no six consecutive free loopback ports")


def test_up_on_tcp_writes_endpoints_for_the_home(home: Path) -> None:
    base = free_port_base()
    up = Up(home, "--tcp", f"127.0.0.1:{base}")
    try:
        up.wait_ready()
        assert Endpoints.for_home(home) == Endpoints.tcp("127.0.0.1", base)
        with sdk.connect(home, timeout=5) as bus:
            assert bus.sessions.ensure("tcp-1", "over tcp").title == "over tcp"
        with SessionClient.open(f"tcp://127.0.0.1:{base}") as direct:
            assert direct.get("tcp-1").title == "over tcp"
        assert up.stop() == 0
    finally:
        up.kill()


def test_second_up_in_the_same_home_refuses(home: Path, up: Up) -> None:
    up.wait_ready()
    second = subprocess.run(
        [sys.executable, "-m", "broker", "up", "--home", str(home)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert second.returncode == 1
    assert f"pryxbus up is already running in {home}" in second.stderr, second.stderr


def test_up_gives_up_on_a_part_that_cannot_start(home: Path) -> None:
    (home / "sessions.db").write_text("this is not a database\n" * 50)
    done = subprocess.run(
        [sys.executable, "-m", "broker", "up", "--home", str(home)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "session-service could not start" in done.stderr and "3 times" in done.stderr
    assert "as the session database" in done.stderr  # the part's own reason
    assert "ready" not in done.stdout
    for part in ("broker", "event-log"):  # the parts that did start were stopped
        pid = pid_of(home, part)
        assert pid and not alive(pid)
    assert not list(home.glob("*.sock"))
