"""The event log process (issue 4): every event logged, gaps recorded, retention, bad requests,
and the version carried across broker restarts (kill -9 included)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import zmq

import sdk
from broker.bus.reservation import read_mark
from schemas.endpoints import Endpoints
from tests.helpers import REPO, wait_for, wait_logged


def test_every_event_is_logged_with_its_envelope(home: Path, event_log, bus: sdk.Bus) -> None:
    for i in range(50):
        bus.publish("channel:message" if i % 2 else "agent:spawned", {"i": i}, session_id=f"s-{i % 3}")
    stats = wait_logged(bus, 50)
    assert (stats["events"], stats["first"], stats["last"], stats["lost"], stats["gaps"]) == (50, 1, 50, 0, 0)
    events = list(bus.replay())
    assert [e.version for e in events] == list(range(1, 51))
    assert [e.payload for e in events] == [{"i": i} for i in range(50)]
    assert [e.type for e in events] == ["channel:message" if i % 2 else "agent:spawned" for i in range(50)]
    assert [e.session_id for e in events] == [f"s-{i % 3}" for i in range(50)]
    assert {e.source for e in events} == {"test"}
    assert [e.seq for e in events if e.type == "agent:spawned"] == list(range(1, 26))


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_log_yields_the_cpu_to_the_bus(start) -> None:
    """A background archiver: it runs below normal priority (default nice 10, --nice to change)."""
    broker = start("broker")
    assert niceness(start("event-log").pid) == min(niceness(broker.pid) + 10, 19)


def test_event_log_nice_must_be_0_to_19(home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "broker", "event-log", "--home", str(home), "--nice", "-5"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert out.returncode == 2
    assert "--nice: must be a whole number from 0 to 19, not '-5'" in out.stderr


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler installed for ``sig`` (/proc/PID/status SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
    return bool(mask & (1 << (sig - 1)))


def test_an_event_log_waiting_for_its_broker_stops_on_sigterm(home: Path) -> None:
    """No broker yet: the log waits for one (--wait, 30 s), and a SIGTERM (or Ctrl-C) in that time
    stops it at once instead of being ignored until the wait ends."""
    log = subprocess.Popen(
        [sys.executable, "-m", "broker", "event-log", "--home", str(home), "--wait", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        wait_for(lambda: log.poll() is None and catches(log.pid, signal.SIGTERM), bool, timeout=20,
                 what="the event log's SIGTERM handler")
        log.send_signal(signal.SIGTERM)
        out, err = log.communicate(timeout=10)
        assert log.returncode == 0, err
        assert "pryxbus event-log stopped before the broker answered" in out
        assert "ready" not in out
    finally:
        if log.poll() is None:
            log.kill()
            log.wait()


def test_a_broker_awaiting_the_log_takes_events_once_it_subscribes(start) -> None:
    """--await-log: publishers wait (they get no subscription) until the event log subscribes."""
    broker = start("broker", "--await-log", "60")
    home = broker.home
    with sdk.connect(home, name="test", timeout=60) as bus:
        done = threading.Event()
        publisher = threading.Thread(target=lambda: (bus.publish("a:b", {"n": 1}), done.set()), daemon=True)
        publisher.start()
        wait_for(bus.stats, lambda s: s["publishers"] == 1, what="the publisher connected")
        held = bus.stats()
        assert not done.is_set() and (held["version"], held["taking_events"]) == (0, False)
        start("event-log")
        assert done.wait(30)
        assert bus.stats()["taking_events"] is True
        wait_logged(bus, 1)
    assert "the event log subscribed; taking events" in broker.log


def test_bad_requests_get_structured_errors_and_are_counted(home: Path, event_log, bus: sdk.Bus) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(Endpoints.for_home(home).log)
    requests = [
        b"\xc1garbage",
        msgpack.packb([1, 2]),
        msgpack.packb({"op": "nope"}),
        msgpack.packb({"op": "replay", "since": "x"}),
        msgpack.packb({"op": "replay", "since": -1}),
        msgpack.packb({"op": "replay", "patterns": ["a::b"]}),
        msgpack.packb({"op": "replay", "patterns": "agent:*"}),
        msgpack.packb({"op": "replay", "ts_from": "yesterday"}),
        msgpack.packb({"op": "import", "events": [[1, 1, "x", "not bytes"]]}),
        msgpack.packb({"op": "summary", "bucket": 0}),
    ]
    codes = []
    try:
        for request in requests:
            sock.send(request)
            assert sock.poll(5000), "the log did not answer"
            reply = msgpack.unpackb(sock.recv(), raw=False)
            assert reply["ok"] is False and isinstance(reply["message"], str)
            codes.append(reply["code"])
    finally:
        sock.close()
        ctx.term()
    assert codes == ["bad_request", "bad_request", "unknown_op"] + ["bad_request"] * 7
    stats = bus.log_stats()
    assert stats["bad_requests"] == len(requests)
    bus.publish("channel:message", {"still": "alive"})
    wait_logged(bus, 1)
    assert [e.payload for e in bus.replay()] == [{"still": "alive"}]


def test_a_log_that_falls_behind_holds_publishers_back_and_loses_nothing(start) -> None:
    """The log stopped (SIGSTOP): the broker stamps no more than it can keep for it (its unlogged
    buffer, here bounded by --log-hwm 10) and then reads no publisher; once the log runs again,
    it has every event and records no gap. (Before issue 15 the log lost what overflowed.)"""
    start("broker", "--log-hwm", "10")
    log = start("event-log", "--rcvhwm", "10")
    home = log.home
    with sdk.connect(home, name="test") as bus:
        bus.publish("channel:message", {"n": 0})
        wait_for(bus.stats, lambda s: s["durable"]["log_durable"] == 1, what="the log's ack of event 1")
        log.signal(19)  # SIGSTOP
        try:
            for n in range(1, 200):
                bus.publish("channel:message", {"n": n})
            held = wait_for(bus.stats, lambda s: s["durable"]["unlogged_events"] == 10,
                            what="the broker keeping 10 events for the log")
            assert held["version"] == 11  # and stamping no more: the publisher waits
        finally:
            log.signal(18)  # SIGCONT
        stats = wait_logged(bus, 200)
        assert (stats["events"], stats["lost"], stats["gaps"], stats["missing"]) == (200, 0, 0, 0)
        assert [e.payload["n"] for e in bus.replay()] == list(range(200))


def test_retention_keeps_the_newest_events(start) -> None:
    start("broker")
    log = start("event-log", "--retain-events", "20", "--retain-interval", "0.05")
    with sdk.connect(log.home, name="test") as bus:
        for i in range(50):
            bus.publish("trace:event", {"i": i})
        stats = wait_for(
            bus.log_stats, lambda s: s["last"] == 50 and s["events"] == 20, what="50 logged, 20 kept"
        )
        assert (stats["first"], stats["trimmed"]) == (31, 30)
        assert [e.version for e in bus.replay()] == list(range(31, 51))


def test_retention_by_age(start) -> None:
    start("broker")
    log = start("event-log", "--retain-seconds", "3600", "--retain-interval", "0.05")
    with sdk.connect(log.home, name="test") as bus:
        ctx = zmq.Context()
        try:
            pub = ctx.socket(zmq.XPUB)  # a raw publisher can set an old timestamp
            pub.linger = -1  # close() hands every event on, however long a loaded machine takes
            pub.connect(bus.endpoints.publish)
            assert pub.poll(5000)
            pub.recv()
            old = msgpack.packb([1, 1000.0, "raw", None, {"old": True}])
            for _ in range(5):
                pub.send_multipart([b"trace:event", old])
            pub.close()
        finally:
            ctx.term()
        # Age is trimmed from the oldest version up to the first young event, and the broker takes
        # turns between connections: published now, the young event could be stamped between the
        # old ones (seen under load: versions 3-6 kept). It goes once the broker has stamped all five.
        wait_for(bus.stats, lambda s: s["version"] == 5, what="the 5 old events stamped")
        bus.publish("trace:event", {"old": False})
        stats = wait_for(bus.log_stats, lambda s: s["last"] == 6 and s["events"] == 1, what="old events trimmed")
        assert stats["trimmed"] == 5
        assert [(e.version, e.payload) for e in bus.replay()] == [(6, {"old": False})]


def test_version_continues_after_a_clean_broker_restart(home: Path, start) -> None:
    broker = start("broker")
    start("event-log")
    with sdk.connect(home, name="test") as bus:
        for i in range(5):
            bus.publish("channel:message", {"i": i})
        wait_logged(bus, 5)
    broker.stop()
    assert read_mark(home) == 5
    start("broker")
    with sdk.connect(home, name="test") as bus:
        with bus.subscribe() as sub:
            bus.publish("channel:message", {"i": 5})
            event = sub.recv(timeout=5)
        assert (event.version, event.seq) == (6, 1)


def test_version_never_reused_after_kill_9(home: Path, start) -> None:
    """Versions the log never saw (it was stopped) are not handed out again after a crash."""
    broker = start("broker")
    log = start("event-log")
    with sdk.connect(home, name="test") as bus:
        for i in range(5):
            bus.publish("channel:message", {"i": i})
        wait_logged(bus, 5)
        log.stop()
        with bus.subscribe() as sub:
            for i in range(5, 10):
                bus.publish("channel:message", {"i": i})
            unlogged = [sub.recv(timeout=5).version for _ in range(5)]
    assert unlogged == [6, 7, 8, 9, 10]
    mark = read_mark(home)
    assert mark >= 10
    broker.kill()
    start("broker")
    start("event-log")
    with sdk.connect(home, name="test") as bus:
        with bus.subscribe() as sub:
            bus.publish("channel:message", {"i": 10})
            event = sub.recv(timeout=5)
        assert event.version == mark + 1
        assert event.seq == 1  # the per-topic sequence restarts; subscribers take it as a new baseline
        stats = wait_logged(bus, mark + 1)
        assert [e.version for e in bus.replay()] == [1, 2, 3, 4, 5, mark + 1]
        assert stats["lost"] == 0
        assert [(g["kind"], g["first_missing"], g["last_missing"]) for g in stats["recent_gaps"]] == [
            ("reconnect", 6, mark)
        ]


def test_cli_log_query_tail_and_stats(home: Path, event_log, bus: sdk.Bus) -> None:
    for i in range(6):
        bus.publish("agent:spawned" if i % 2 else "channel:message", {"i": i}, session_id="s-1" if i < 3 else None)
    wait_logged(bus, 6)

    def cli(*args: str) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "broker", "log", *args, "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=True,
        ).stdout
        return [json.loads(line) for line in out.splitlines()]

    assert [e["version"] for e in cli("query")] == [1, 2, 3, 4, 5, 6]
    assert [e["version"] for e in cli("query", "agent:*", "--since", "2")] == [4, 6]
    assert [e["version"] for e in cli("query", "--session", "s-1", "--until", "2")] == [1, 2]
    assert [e["payload"] for e in cli("query", "--limit", "1")] == [{"i": 0}]
    assert [e["version"] for e in cli("tail", "-n", "2")] == [5, 6]
    assert [e["version"] for e in cli("tail", "channel:message", "-n", "2")] == [3, 5]
    [stats] = cli("stats")
    assert (stats["events"], stats["last"], stats["lost"]) == (6, 6, 0)
    bad = subprocess.run(
        [sys.executable, "-m", "broker", "log", "query", "a::b", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("pryxbus: ") and bad.stdout == ""


def test_up_runs_the_event_log(home: Path, start) -> None:
    start("up")
    with sdk.connect(home, name="test") as bus:
        bus.publish("channel:message", {"via": "up"}, session_id="s-up")
        wait_logged(bus, 1)
        assert [(e.version, e.payload, e.session_id) for e in bus.replay()] == [(1, {"via": "up"}, "s-up")]


def test_a_broker_awaiting_the_log_holds_events_while_the_log_is_away(start) -> None:
    """An event log that stops (a crash or a restart under ``up``) misses no event: the broker
    takes none until the log has subscribed again. Before, the broker stamped and delivered
    everything published while the log was away, and the log never had those versions."""
    broker = start("broker", "--await-log", "60")
    log = start("event-log")
    with sdk.connect(broker.home, name="test", timeout=30) as bus:
        for i in range(10):
            bus.publish("a:b", {"n": i})
        wait_logged(bus, 10)
        log.stop()
        wait_for(bus.stats, lambda s: s["taking_events"] is False, what="the broker holding events")
        for i in range(10, 20):
            bus.publish("a:b", {"n": i})  # queued for the broker, which does not read them yet
        assert bus.stats()["version"] == 10
        start("event-log")
        wait_logged(bus, 20)
        assert [e.payload["n"] for e in bus.replay()] == list(range(20))
        stats = bus.log_stats()
        assert (stats["events"], stats["lost"], stats["gaps"]) == (20, 0, 0)
    assert "the event log went away; holding events" in broker.log


def test_a_disk_that_refuses_the_logs_writes_does_not_kill_it(home: Path, event_log, bus: sdk.Bus) -> None:
    """A full or failing disk: the log keeps what it received, reads no more until the disk takes
    it, and loses nothing once it does. Before, the first refused write killed the process (and
    with it every event it had received), and a restarted log died the same way. The fault is
    real: the log process may not grow any file (RLIMIT_FSIZE set from outside)."""
    import resource

    for i in range(5):
        bus.publish("a:b", {"n": i})
    wait_logged(bus, 5)
    limits = resource.prlimit(event_log.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(event_log.pid, resource.RLIMIT_FSIZE, (1, limits[1]))
    try:
        for i in range(5, 15):
            bus.publish("a:b", {"n": i})
        refused = wait_for(bus.log_stats, lambda s: s.get("write_errors", 0) > 0, what="a refused write")
        assert refused["unwritten"] > 0 and refused["events"] == 5
    finally:
        resource.prlimit(event_log.pid, resource.RLIMIT_FSIZE, limits)
    stats = wait_logged(bus, 15)
    assert (stats["events"], stats["lost"], stats["gaps"], stats["unwritten"]) == (15, 0, 0, 0)
    assert [e.payload["n"] for e in bus.replay()] == list(range(15))
    assert "the event log writes again after" in event_log.log


def test_a_clean_broker_stop_on_a_full_disk_keeps_the_reserved_mark(home: Path, start) -> None:
    """The exact version mark a clean stop writes may not be writable (a full disk, here a
    directory where its temporary file goes): the broker says so and stops cleanly (before: a
    traceback and exit status 1); the next run continues after the mark it had reserved, so no
    version is reused."""
    broker = start("broker")
    with sdk.connect(home, name="test") as bus:
        for i in range(3):
            bus.publish("channel:message", {"i": i})
        wait_for(bus.stats, lambda s: s["version"] == 3, what="3 events stamped")
    reserved = read_mark(home)
    assert reserved > 3
    (home / "broker.tmp").mkdir()  # where Reservation.write puts the mark before renaming it
    broker.stop()
    assert "Traceback" not in broker.log
    assert "cannot write the exact version mark" in broker.log
    assert "pryxbus broker stopped at version 3" in broker.log
    assert read_mark(home) == reserved
    (home / "broker.tmp").rmdir()  # room again: the next broker reserves its own range
    start("broker")
    with sdk.connect(home, name="test") as bus:
        with bus.subscribe() as sub:
            bus.publish("channel:message", {"i": 3})
            assert sub.recv(timeout=5).version == reserved + 1


def test_a_running_broker_that_cannot_reserve_versions_holds_events_until_it_can(home: Path, start) -> None:
    """The broker writes its version mark ahead of the versions it stamps (once per 2^20 events, and
    for the first event of a run). When the disk refuses that write (here: a directory where its
    temporary file goes), the broker stamps nothing past the mark on disk: it reads no events, says
    so once, and tries again each second. Before, the OSError killed it. Nothing is lost: the
    events wait in the publisher's queue and arrive, in order, once the mark can be written."""
    broker = start("broker")
    blocker = home / "broker.tmp"  # where Reservation.write puts the mark before renaming it
    blocker.mkdir()
    with sdk.connect(home, name="test") as bus, bus.subscribe("channel:**") as sub:
        for i in range(3):
            bus.publish("channel:message", {"i": i})
        wait_for(lambda: broker.log, lambda text: "cannot reserve versions" in text, timeout=10,
                 what="the broker to report the refused mark")
        assert bus.stats()["version"] == 0  # alive, answering, and nothing stamped
        blocker.rmdir()
        got = [sub.recv(timeout=10) for _ in range(3)]
    assert [(e.version, e.payload["i"]) for e in got] == [(1, 0), (2, 1), (3, 2)]
    assert read_mark(home) >= 3
    assert "versions reserved again" in broker.log and "Traceback" not in broker.log
