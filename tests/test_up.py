"""``pryxbus up``: the supervised stack starts, serves, restarts a dead part and stops cleanly (issue 3)."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

import sdk
from schemas.endpoints import ENDPOINT_NAMES, Endpoints
from sdk.sessions import SessionClient
from tests.helpers import (
    FAST_UP, Up, alive, free_port_base, pid_of, pryxbus, python_process, start_part, wait_for,
)


@pytest.fixture
def up(home: Path):
    running = Up(home, "--restart-backoff", "0.05")
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
    output = up.output
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
    output = up.output
    assert "session-service (pid %d) exited with status -9; restarting" % old in output
    assert "broker (pid %d) exited with status -9; restarting" % old_broker in output


def test_sighup_stops_up_cleanly_and_in_order(home: Path, up: Up) -> None:
    """Closing the terminal (or an ssh session) sends SIGHUP: up stops its children in order, as on
    SIGTERM, instead of dying at once and leaving them to stop all together on its death."""
    up.wait_ready()
    assert not ignores(up.proc.pid, signal.SIGHUP)  # Up resets it, whatever this run inherited
    children = [pid_of(home, "broker"), pid_of(home, "event-log"), pid_of(home, "sessions")]
    assert up.stop(signal.SIGHUP) == 0
    output = up.output
    assert "pryxbus up stopped" in output, output
    order = [output.index(f"[{name}] pryxbus {name} stopped") for name in ("session-service", "event-log", "broker")]
    assert order == sorted(order), output
    assert not any(map(alive, children))
    assert not list(home.glob("*.sock"))


def ignores(pid: int, sig: int) -> bool:
    """Whether the process ignores ``sig`` (/proc/PID/status SigIgn)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(x for x in status.splitlines() if x.startswith("SigIgn:")).split()[1], 16)
    return bool(mask & (1 << (sig - 1)))


def test_under_nohup_sighup_stays_ignored(home: Path) -> None:
    """``nohup pryxbus up &`` must outlive the terminal: a SIGHUP ignored from the start is not
    turned into a stop."""
    up = Up(home, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        up.wait_ready()
        assert ignores(up.proc.pid, signal.SIGHUP)
        assert up.stop() == 0
    finally:
        up.kill()


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
        # The subscriber reconnects on its own schedule (a backoff of up to 1 s), maybe after all
        # of those went by: publish one more per look until it gets events published after the crash.
        got: list = []
        more = iter(range(300, 1_000_000))

        def publish_one_and_take_what_came() -> list:
            bus.publish("load:tick", {"n": next(more)})
            while True:
                try:
                    got.append(sub.recv(timeout=0.05))
                except TimeoutError:
                    return got

        wait_for(publish_one_and_take_what_came, lambda g: any(e.payload["n"] >= 0 for e in g),
                 timeout=30, what="events published after the crash reaching the subscriber")
        logged = wait_for(
            lambda: [e.version for e in bus.replay("load:*")],
            lambda v: v and v[-1] >= got[-1].version,
            timeout=10,
            what="the log holding the last event",
        )
    assert {e.version for e in got} - set(logged) == set()
    assert "the event log subscribed; taking events" in up.output


def ready_endpoints(line: str) -> dict[str, str]:
    """The ``NAME=ENDPOINT`` words of a ready line."""
    return dict(word.split("=", 1) for word in line.split() if word.split("=", 1)[0] in ENDPOINT_NAMES)


def test_up_on_tcp_port_0_names_the_ports_and_a_restarted_part_keeps_them(home: Path) -> None:
    """``--tcp HOST:0``: every part binds a port the system chooses; the ready line and the home's
    endpoints.json name them, and a part restarted after a crash binds the same ones again."""
    up = Up(home, "--tcp", "127.0.0.1:0", "--restart-backoff", "0.05")
    try:
        named = ready_endpoints(up.wait_ready())
        endpoints = Endpoints.for_home(home)
        assert named == {n: getattr(endpoints, n) for n in ("publish", "subscribe", "sessions")}
        ports = [e.rpartition(":")[2] for e in endpoints.names().values()]
        assert all(e.startswith("tcp://127.0.0.1:") for e in endpoints.names().values()), endpoints
        assert "0" not in ports and len(set(ports)) == 6, endpoints
        with sdk.connect(home, timeout=5) as bus:
            assert bus.sessions.ensure("tcp-1", "over tcp").title == "over tcp"
        with SessionClient.open(endpoints, timeout=1.0, retries=20) as direct:
            assert direct.get("tcp-1").title == "over tcp"
            for part in ("sessions", "broker"):
                old = pid_of(home, part)
                os.kill(old, signal.SIGKILL)
                wait_for(lambda: pid_of(home, part), lambda p: p not in (0, old), timeout=15, what=f"a new {part}")
            assert direct.get("tcp-1").title == "over tcp"  # the restarted service, on the same port
        assert Endpoints.for_home(home) == endpoints
        with sdk.connect(home, timeout=5) as bus, bus.subscribe("trace:*") as sub:
            bus.publish("trace:event", {"name": "after restart"})
            assert sub.recv(timeout=10).payload == {"name": "after restart"}
        assert up.stop() == 0
        assert "broker (pid" in up.output and "exited with status -9; restarting" in up.output
    finally:
        up.kill()


@pytest.mark.parametrize("spelling", ["[::1]", "::1"])
def test_up_on_ipv6_loopback_serves_events_sessions_and_the_log(home: Path, spelling: str) -> None:
    """ZeroMQ sockets take IPv6 addresses only with IPV6 set: every part and the SDK set it for them."""
    up = Up(home, "--tcp", f"{spelling}:0")
    try:
        publish = ready_endpoints(up.wait_ready())["publish"]
        assert publish.startswith("tcp://[::1]:") and Endpoints.for_home(home).publish == publish
        with sdk.connect(home, name="v6", timeout=5) as bus, bus.subscribe("v6:*") as sub:
            bus.publish("v6:hello", {"n": 1})
            assert sub.recv(timeout=10).payload == {"n": 1}
            assert bus.sessions.ensure("v6-1", "over IPv6").title == "over IPv6"
            logged = wait_for(lambda: list(bus.replay("v6:*")), bool, timeout=10, what="the event logged")
            assert [e.payload for e in logged] == [{"n": 1}]
        done = pryxbus("stats", home=home)  # the CLI, on the IPv6 endpoints the home names
        assert done.returncode == 0 and json.loads(done.stdout)["events_in"] >= 1, done.stderr
        assert up.stop() == 0
    finally:
        up.kill()


def test_up_on_ipc_after_up_on_tcp_forgets_the_tcp_ports(home: Path) -> None:
    """A home that ran ``up --tcp`` keeps its endpoints.json; a later ``up`` on ipc sockets must not
    leave it there: the event log (and every client given the home) would go to the old tcp ports."""
    first = Up(home, "--tcp", "127.0.0.1:0")
    try:
        first.wait_ready()
        assert first.stop() == 0
    finally:
        first.kill()
    assert Endpoints.for_home(home).publish.startswith("tcp://")
    second = Up(home)
    try:
        second.wait_ready(timeout=20)
        assert Endpoints.for_home(home) == Endpoints.ipc(home)
        with sdk.connect(home, name="t", timeout=5) as bus:
            bus.publish("trace:event", {"name": "on ipc"})
            logged = wait_for(lambda: list(bus.replay("trace:*")), bool, timeout=10, what="the event logged")
        assert [e.payload for e in logged] == [{"name": "on ipc"}]
        assert second.stop() == 0
        assert "did not subscribe" not in second.output
    finally:
        second.kill()


def test_up_gives_up_when_a_port_is_taken(home: Path) -> None:
    """The session service's port is held by another process: its error says "Address already in
    use", which contains "ready"; it must not pass for the part's ready line."""
    base = free_port_base()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 3))  # the sessions port
        taken.listen()
        done = pryxbus("up", *FAST_UP, "--tcp", f"127.0.0.1:{base}", home=home)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "ready" not in done.stdout
    assert "session-service is up" not in done.stderr
    assert "session-service could not start" in done.stderr and "3 times" in done.stderr, done.stderr
    assert f"cannot bind tcp://127.0.0.1:{base + 3}: Address already in use" in done.stderr


def test_up_gives_up_when_the_broker_port_is_taken_and_stops_the_waiting_log(home: Path) -> None:
    """The broker cannot bind, so the event log is still waiting for it when up gives up: the log
    must stop on up's SIGTERM at once, not be killed after up's stop timeout."""
    base = free_port_base()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))  # the publish port
        taken.listen()
        done = pryxbus("up", *FAST_UP, "--tcp", f"127.0.0.1:{base}", home=home)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "broker could not start (exited with status 1, 3 times): pryxbus: broker cannot bind" in done.stderr
    assert "did not stop" not in done.stderr, done.stderr
    assert "[event-log] pryxbus event-log stopped" in done.stderr, done.stderr
    assert not list(home.glob("*.sock"))


def test_up_gives_up_when_a_part_already_runs_in_the_home(home: Path, xprocess) -> None:
    """A session service left running in the home (its lock taken) is reported, not taken for ready."""
    other = start_part(xprocess, home, "session-service")
    try:
        done = pryxbus("up", *FAST_UP, home=home)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "ready" not in done.stdout
        assert f"a session service is already running in {home} (pid {other.pid})" in done.stderr, done.stderr
    finally:
        other.stop()


def test_an_up_that_fails_leaves_the_sockets_of_a_part_it_did_not_start(home: Path, xprocess) -> None:
    """A broker already runs alone in the home: up cannot start its own, and must not unlink the
    running broker's socket files on its way out (the broker would be unreachable)."""
    other = start_part(xprocess, home, "broker")
    try:
        sockets = sorted(p.name for p in home.glob("*.sock"))
        done = pryxbus("up", *FAST_UP, home=home)
        assert done.returncode == 1, done.stderr[-2000:]
        assert f"a broker is already running in {home} (pid {other.pid})" in done.stderr
        assert sorted(p.name for p in home.glob("*.sock")) == sockets
        with sdk.connect(home, name="t", timeout=5) as bus:
            assert bus.stats()["version"] == 0
    finally:
        other.stop()


HOLD_LOCK = """
import signal, sys
from pathlib import Path
from broker.process import home_lock
with home_lock(Path(sys.argv[1]), "event-log"):
    print("locked", flush=True)
    signal.pause()  # until SIGTERM ends it
"""


def test_up_waits_for_a_part_an_earlier_up_left_stopping(home: Path) -> None:
    """After a kill -9 of up its children get SIGTERM, but one may take a while to stop (an event
    log writing its backlog): a new up waits for its lock instead of failing three quick starts."""
    old = python_process(HOLD_LOCK, str(home))  # stands for the old event log, still stopping
    try:
        assert old.stdout is not None and old.stdout.readline() == "locked\n"
        up = Up(home)
        try:
            up.wait_line(f"waiting for the event-log left running in {home} (pid {old.pid}) to stop")
            old.send_signal(signal.SIGTERM)
            up.wait_ready()
            assert "exited with status" not in up.output, up.output
            assert up.stop() == 0
        finally:
            up.kill()
    finally:
        old.kill()
        old.wait(10)


def test_second_up_in_the_same_home_refuses(home: Path, up: Up) -> None:
    up.wait_ready()
    second = pryxbus("up", *FAST_UP, home=home)
    assert second.returncode == 1
    assert f"pryxbus up is already running in {home}" in second.stderr, second.stderr


def test_up_gives_up_on_a_part_that_cannot_start(home: Path) -> None:
    (home / "sessions.db").write_text("this is not a database\n" * 50)
    done = pryxbus("up", *FAST_UP, home=home)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "session-service could not start" in done.stderr and "3 times" in done.stderr
    assert "as the session database" in done.stderr  # the part's own reason
    assert "ready" not in done.stdout
    for part in ("broker", "event-log"):  # the parts that did start were stopped
        pid = pid_of(home, part)
        assert pid and not alive(pid)
    assert not list(home.glob("*.sock"))


def test_a_broker_alone_on_ipc_forgets_the_tcp_ports_of_an_earlier_run(home: Path, start) -> None:
    """``pryxbus broker`` on its own (no ``up``) on the home's ipc sockets, after a tcp run in that
    home: clients given the home reach it, not the old tcp ports."""
    Endpoints.tcp("127.0.0.1", 9).write(home)  # what `broker --tcp` left (nothing listens on port 9)
    start("broker")
    assert Endpoints.for_home(home) == Endpoints.ipc(home)
    with sdk.connect(home, name="t", timeout=5) as bus:
        with bus.subscribe("trace:*") as sub:
            bus.publish("trace:event", {"name": "on ipc"})
            assert sub.recv(timeout=10).payload == {"name": "on ipc"}
