"""Subscription filters (issue 17): ``session_id=`` and ``where=`` (a callable or a JMESPath
expression) on live subscriptions of both fronts, on ``since=`` and ``replay``, and on the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sdk
from tests.fronts import Front
from tests.helpers import ENV, collect, pryxbus, wait_for, wait_logged

TYPES = ["agent:spawned", "agent:completed", "channel:message"]


def publish_mix(bus: sdk.Bus, n: int = 60, start: int = 0) -> list[dict]:
    """Event i: type TYPES[i % 3], session s-(i % 4) (none when i % 4 == 3), payload {"i", "agent"}.
    Returns what was published, as the fields a filter sees."""
    sent = []
    for i in range(start, start + n):
        session = None if i % 4 == 3 else f"s-{i % 4}"
        payload = {"i": i, "agent": f"a{i % 5}"}
        bus.publish(TYPES[i % 3], payload, session_id=session)
        sent.append({"type": TYPES[i % 3], "session_id": session, "payload": payload})
    return sent


def end_marker(bus: sdk.Bus, session: str | None = None) -> None:
    bus.publish("agent:end", {"i": -1, "agent": "a0", "end": True}, session_id=session)


def until_end(sub, timeout: float = 5.0) -> list[sdk.Event]:
    got = []
    while True:
        event = sub.recv(timeout=timeout)
        if event.type == "agent:end":
            return got
        got.append(event)


def test_live_filters_deliver_exactly_the_matching_events(front_bus) -> None:
    bus = front_bus
    by_session = bus.subscribe("agent:*", session_id="s-1")
    by_expr = bus.subscribe("**", where="payload.agent == 'a2' && session_id != null || payload.end")
    by_call = bus.subscribe("agent:*", "channel:*", where=lambda e: e.payload["i"] % 7 == 0 or e.type == "agent:end")
    both = bus.subscribe("**", session_id="s-2", where="type == 'channel:message' || payload.end")
    sent = publish_mix(bus)
    end_marker(bus, "s-1")
    end_marker(bus, "s-2")
    end_marker(bus, None)
    assert [e.payload["i"] for e in until_end(by_session)] == [
        i for i, s in enumerate(sent) if s["session_id"] == "s-1" and s["type"].startswith("agent:")
    ]
    expr_got = until_end(by_expr)
    assert [e.payload["i"] for e in expr_got] == [
        i for i, s in enumerate(sent) if s["payload"]["agent"] == "a2" and s["session_id"] is not None
    ]
    assert [e.payload["i"] for e in until_end(by_call)] == [i for i in range(60) if i % 7 == 0]
    assert [e.payload["i"] for e in until_end(both)] == [
        i for i, s in enumerate(sent) if s["session_id"] == "s-2" and s["type"] == "channel:message"
    ]
    for sub in (by_session, by_expr, by_call, both):
        assert sub.lost == 0
        rest = []
        with pytest.raises(sdk.BusTimeout):
            while True:
                rest.append(sub.recv(timeout=0.2).type)
        assert set(rest) <= {"agent:end"}  # the other sessions' end markers
        sub.close()


def test_a_bad_expression_fails_at_subscribe_and_sends_nothing(front_bus) -> None:
    bus = front_bus
    before = bus.stats()["syncs"]
    for bad in ("payload.agent ==", "type = 'x'", "&&", 42):
        with pytest.raises(sdk.InvalidEvent, match="where"):
            bus.subscribe("agent:*", where=bad)
    with pytest.raises(sdk.InvalidEvent, match="session_id"):
        bus.subscribe("agent:*", session_id=7)
    assert bus.stats()["syncs"] == before  # no subscription reached the broker


def test_a_raising_callable_counts_as_no_and_is_counted(front_bus) -> None:
    bus = front_bus
    with bus.subscribe("agent:*", where=lambda e: 1 / (e.payload["i"] % 2)) as sub:
        for i in range(6):
            bus.publish("agent:x", {"i": i})
        assert [e.payload["i"] for e in collect(sub, 3)] == [1, 3, 5]
        assert (sub.where_errors, sub.filtered_out, sub.received) == (3, 3, 6)


def test_filters_keep_loss_detection_exact(start, home: Path, front: Front) -> None:
    """A session subscriber listens to its session's stream, numbered on its own; ``where`` runs
    after the sequences are checked: a filtered subscriber that falls behind still learns exactly
    how many of its session's events it lost (received + lost = sent), none of the other session's
    crossed its socket, and the loss is seen the same way with the session filtered in the SDK
    (``policy="count"`` without the stream: the other session's events are received too)."""
    start("broker", "--sub-hwm", "10")
    n = 3000
    with front.connect(home, name="test") as bus:
        sub = bus.subscribe("burst:*", hwm=10, policy="count", session_id="s-1", where="payload.i >= `0`")
        for i in range(n):
            bus.publish("burst:a", {"i": i, "pad": "x" * 2000}, session_id=f"s-{i % 2}")
        wait_for(bus.stats, lambda s: s["version"] >= n, what="the burst stamped")
        got: list[sdk.Event] = []
        give_up = time.monotonic() + 20
        while sub.received + sub.lost < n // 2:
            try:
                got.append(sub.recv(timeout=1))
            except sdk.BusTimeout:
                assert time.monotonic() < give_up, (sub.received, sub.lost)
        assert sub.lost > 0, "nothing was lost: the burst did not overflow the queues"
        assert sub.received + sub.lost == n // 2
        assert sub.filtered_out == 0  # the other session never reached the SDK
        assert got and all(e.session_id == "s-1" for e in got)
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        sub.close()


def test_where_on_since_and_replay(home: Path, event_log, front_bus) -> None:
    bus = front_bus
    sent = publish_mix(bus, 40)
    wait_logged(bus, 40)
    expr = "payload.agent == 'a1' || payload.agent == 'a3'"
    want = [i for i, s in enumerate(sent) if s["payload"]["agent"] in ("a1", "a3")]
    assert [e.payload["i"] for e in bus.replay(where=expr)] == want
    assert [e.payload["i"] for e in bus.replay("agent:*", where=lambda e: e.payload["i"] > 30)] == [
        i for i, s in enumerate(sent) if i > 30 and s["type"].startswith("agent:")
    ]
    with pytest.raises(sdk.InvalidEvent, match="where"):
        bus.replay(where="payload.(")
    with bus.subscribe("**", since=10, where=f"{expr} || payload.end", session_id="s-1") as sub:
        more = publish_mix(bus, 20, start=40)
        end_marker(bus, "s-1")
        got = [e.payload["i"] for e in until_end(sub)]
    everything = sent + more
    assert got == [
        i for i, s in enumerate(everything)
        if i >= 10 and s["payload"]["agent"] in ("a1", "a3") and s["session_id"] == "s-1"
    ]


def test_cli_sub_and_log_query_filters(home: Path, event_log, bus) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "sub", "agent:*", "--session", "s-0", "--where", "payload.agent != 'a0'",
         "--count", "3", "--timeout", "10", "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    line = proc.stderr.readline()
    assert "subscribed" in line, line + proc.stderr.read()
    sent = publish_mix(bus, 60)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    want = [i for i, s in enumerate(sent) if s["session_id"] == "s-0" and s["type"].startswith("agent:")
            and s["payload"]["agent"] != "a0"][:3]
    assert [json.loads(line)["payload"]["i"] for line in out.splitlines()] == want
    wait_logged(bus, 60)
    query = pryxbus("log", "query", "--where", "payload.i > `50` && session_id == 's-2'", home=home)
    assert query.returncode == 0, query.stderr
    assert [json.loads(line)["payload"]["i"] for line in query.stdout.splitlines()] == [
        i for i, s in enumerate(sent) if i > 50 and s["session_id"] == "s-2"
    ]
    for args in (("sub", "--where", "payload.("), ("log", "query", "--where", "payload.(")):
        bad = pryxbus(*args, home=home)
        assert bad.returncode != 0 and "not a valid JMESPath expression" in bad.stderr, bad.stderr


def test_session_streams_keep_other_sessions_off_the_socket(front_bus) -> None:
    """Patterns and sessions together: wildcards, several sessions, and the broker forgets a
    stream once its last subscriber is gone."""
    bus = front_bus
    subs = {
        "agent": bus.subscribe("agent:*", session_id="s-1"),
        "all": bus.subscribe(session_id="s-2"),
        "exact": bus.subscribe("channel:message", session_id="s-0"),
        "long": bus.subscribe("**", session_id="L" * 300),
    }
    assert bus.stats()["session_streams"]["sessions"] == 4
    sent = publish_mix(bus, 60)
    bus.publish("agent:spawned", {"i": 60}, session_id="L" * 300)
    bus.publish("agent:spawned", {"i": 61}, session_id="L" * 299)
    for session in ("s-1", "s-2", "s-0", "L" * 300):
        end_marker(bus, session)
    bus.publish("channel:message", {"i": -1, "end": True}, session_id="s-0")
    want = {
        "agent": [i for i, s in enumerate(sent) if s["session_id"] == "s-1" and s["type"].startswith("agent:")],
        "all": [i for i, s in enumerate(sent) if s["session_id"] == "s-2"],
        "exact": [i for i, s in enumerate(sent) if s["session_id"] == "s-0" and s["type"] == "channel:message"],
        "long": [60],
    }
    for name, sub in subs.items():
        got = []
        while True:
            event = sub.recv(timeout=5)
            if event.payload.get("end"):
                break
            got.append(event)
        assert [e.payload["i"] for e in got] == want[name], name
        assert sub.received == len(got) + 1 and sub.filtered_out == 0, name  # only its session arrived
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        sub.close()
    wait_for(bus.stats, lambda s: s["session_streams"]["sessions"] == 0, what="the streams forgotten")


def test_batches_and_recv_many_on_a_session_stream(front_bus) -> None:
    """A batch (one message of many events, PROTOCOL.md §4.2) mixing sessions is taken apart for
    the streams: the subscriber gets its session's events of it, numbered on its stream."""
    bus = front_bus
    with bus.subscribe("batch:*", session_id="s-1") as sub:
        bus.publish_many([("batch:x", {"i": i}, f"s-{i % 3}") for i in range(30)])
        bus.publish("batch:x", {"i": -1}, session_id="s-1")
        got = []
        while not got or got[-1].payload["i"] != -1:
            got += sub.recv_many(max=100, timeout=5)
        assert [e.payload["i"] for e in got] == [i for i in range(30) if i % 3 == 1] + [-1]
        assert [e.seq for e in got] == list(range(1, 12))
        assert sub.lost == 0 and sub.filtered_out == 0


def test_on_a_server_without_session_streams_the_sdk_filters_the_session(xprocess, cluster, stream, homes, front) -> None:
    """An edge (the NATS backbone's stand-in for the broker) serves no session streams: its ping
    says so and ``session_id=`` is filtered in the SDK. The subscriber then receives every
    session's events of its patterns and delivers exactly its session's; falling behind, it still
    sees its losses: ``lost`` counts every lost event of the patterns (which session a lost
    event had is unknown), so none of its session's missing events goes unnoticed."""
    from tests.helpers import start_part

    home = homes()
    part = start_part(xprocess, home, "edge", "--backbone", cluster.servers, "--stream", stream, "--sub-hwm", "200",
                      "--replicas", "1")
    try:
        with front.connect(home, name="test", timeout=5.0) as bus:
            assert not bus.control.call({"op": "ping"}).get("session_streams"), "this edge serves session streams now"
            sub = bus.subscribe("agent:*", session_id="s-1")
            sent = publish_mix(bus, 60)
            end_marker(bus, "s-1")
            want = [i for i, s in enumerate(sent) if s["session_id"] == "s-1" and s["type"].startswith("agent:")]
            others = sum(1 for s in sent if s["session_id"] != "s-1" and s["type"].startswith("agent:"))
            got = until_end(sub)
            assert [e.payload["i"] for e in got] == want
            assert (sub.lost, sub.filtered_out, sub.received) == (0, others, len(want) + others + 1)
            sub.close()

            n = 1000
            sub = bus.subscribe("burst:*", hwm=10, policy="count", session_id="s-1")
            for i in range(n):  # two types: the edge sends runs of one type, so most events go alone
                bus.publish("burst:a" if i % 3 else "burst:b", {"i": i, "pad": "x" * 2000}, session_id=f"s-{i % 2}")
            wait_for(bus.stats, lambda s: s["version"] >= 61 + n, timeout=30, what="the burst stamped")
            delivered: list[sdk.Event] = []
            give_up = time.monotonic() + 30
            while sub.received + sub.lost < n:
                try:
                    delivered.append(sub.recv(timeout=0.5))
                except sdk.BusTimeout:
                    assert time.monotonic() < give_up, (sub.received, sub.lost)
            assert sub.received + sub.lost == n
            assert sub.lost > 0, "nothing was lost: the burst did not overflow the queues"
            assert delivered and all(e.session_id == "s-1" for e in delivered)
            assert [e.payload["i"] for e in delivered] == sorted(e.payload["i"] for e in delivered)
            assert sub.filtered_out == sub.received - len(delivered) > 0  # the other session crossed the socket
            assert n // 2 - len(delivered) <= sub.lost  # every missing event of s-1 is counted
            sub.close()
    finally:
        part.stop()
