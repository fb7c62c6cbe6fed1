"""Issue 15's fault test: two SDK buses publishing at full speed (one event at a time, and in
batches) through three broker ``kill -9``s and a cut of their link (network namespaces), under
``pryxbus up``: every published event is in the event log exactly once, and reaches a ``recover``
subscriber exactly once, in version order; each bus's ``flush()`` returns.

The publishers run in a network namespace joined to the stack by a veth pair, so cutting the link
(the veth down) cuts them off and nothing else. Needs root (``ip netns``); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

import sdk
from schemas.endpoints import Endpoints
from schemas.envelope import decode_body
from tests.helpers import ENV, Up, finish, logged_events, pid_of, wait_for
from tests.test_faults import Collector, until_received

PUBLISHER = r"""
import json, sys, threading, sdk
from schemas.endpoints import Endpoints
from schemas.envelope import decode_body
endpoints, name, batch = Endpoints(**json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
with sdk.connect(endpoints, name=name, timeout=30, publish_buffer=1 << 20) as bus:
    print(json.dumps({"pid": bus.publisher_id}), flush=True)
    topic, sent, timeouts = "load:" + name, 0, 0
    while not stop.is_set():
        try:
            if batch:
                bus.publish_many([(topic, {"i": i}) for i in range(sent + 1, sent + batch + 1)])
                if sent // batch % 10 == 9:  # ten batches in flight at most: batches are ~20x faster
                    bus.flush(timeout=120)
            else:
                bus.publish(topic, {"i": sent + 1})
        except sdk.PublishTimeout:  # nothing was sent
            timeouts += 1
            continue
        sent += batch or 1
    bus.flush(timeout=120)
    stats = bus.publish_stats
    print(json.dumps({"sent": sent, "resent": stats.resent, "timeouts": timeouts, "confirmed": stats.confirmed}), flush=True)
"""
"""``python -c PUBLISHER ENDPOINTS NAME BATCH``: publishes ``load:NAME`` {"i": 1, 2, ...} as fast
as it can (BATCH at a time with publish_many, flushing every ten batches, or one by one if 0) until
a line arrives on stdin, then flushes and prints what it sent. At most 1 MiB unconfirmed (not the
default 16 MiB): a publisher then runs as fast as the event log confirms, and what it sends again
after each kill stays ~12,000 events, not ~250,000 for the log and the subscriber to work through."""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (namespace, its end of the pair,
    this end's address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip (network namespaces)")
    tag = uuid.uuid4().hex[:8]
    ns, here, there = f"pxb{tag}", f"pxh{tag}", f"pxp{tag}"
    net = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"{net}.1/30", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", ns, "addr", "add", f"{net}.2/30", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, there, f"{net}.1"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", here], capture_output=True)


def logged(home: Path) -> list[tuple[int, str, int]]:
    """(version, source, payload's i) of every load event in the log, by version."""
    rows = [(version, decode_body(body)) for version, _type, body in logged_events(home, "load:%")]
    return [(version, source, payload["i"]) for version, (_ts, source, _session, payload) in rows]


@pytest.mark.parametrize("cut", [pytest.param(3, id="3s"), pytest.param(30, id="30s", marks=pytest.mark.soak)])
def test_kill_9_three_times_and_a_link_cut_lose_nothing_and_duplicate_nothing(
    home: Path, netns: tuple[str, str, str], cut: float
) -> None:
    ns, link, address = netns
    names = ["p0", "p1"]
    up = Up(home, "--tcp", "0.0.0.0:0", "--restart-backoff", "0.05")
    pubs: dict[str, subprocess.Popen[str]] = {}
    try:
        up.wait_ready()
        there = json.dumps({k: v.replace("0.0.0.0", address) for k, v in asdict(Endpoints.for_home(home)).items()})
        with sdk.connect(home, name="test", timeout=10) as bus:
            recovering = Collector(bus, "load:*", policy="recover")
            for name, batch in zip(names, ("0", "20")):
                pubs[name] = subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", PUBLISHER, there, name, batch],
                    env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
            for proc in pubs.values():
                json.loads(proc.stdout.readline())  # connected: its publisher id
            until_received([recovering], names, 200, timeout=30)
            for kill in range(3):
                old = pid_of(home, "broker")
                os.kill(old, 9)
                wait_for(lambda: pid_of(home, "broker"), lambda p: p not in (0, old), timeout=30,
                         what=f"the broker restarted ({kill + 1})")
                until_received([recovering], names, 200, timeout=30)
            ip("-n", ns, "link", "set", link, "down")
            try:
                threading.Event().wait(cut)  # sync-ok: the cut lasts this long
            finally:
                ip("-n", ns, "link", "set", link, "up")
            until_received([recovering], names, 200, timeout=60)
            reports = {}
            for name, proc in pubs.items():
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            for name, proc in pubs.items():
                reports[name] = json.loads(finish(proc, timeout=120).strip().splitlines()[-1])
            wait_for(lambda: [recovering.count(n) for n in names],
                     lambda got: all(got[k] >= reports[n]["sent"] for k, n in enumerate(names)),
                     timeout=120, what="every event at the recover subscriber")
            recovering.close()
    finally:
        for proc in pubs.values():
            if proc.poll() is None:
                proc.kill()
        up.kill()
    rows = logged(home)
    for name in names:
        numbers = sorted(i for _v, source, i in rows if source == name)
        assert numbers == list(range(1, reports[name]["sent"] + 1)), f"{name}: the log does not have each number once"
        assert reports[name]["confirmed"] == reports[name]["sent"], f"{name}: flush returned with events unconfirmed"
        assert recovering.streams[name] == list(range(1, reports[name]["sent"] + 1)), f"{name}: recover"
    assert recovering.versions == [v for v, _s, _i in rows]  # exactly the log's, in version order
    print(f"\nkill -9 x3, link cut {cut:g}s: {reports}; {len(rows)} events")
