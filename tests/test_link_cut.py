"""Issue 15's fault test: two identified publishers at full speed through three broker ``kill -9``s
and a cut of their link (network namespaces), under ``pryxbus up``: every published event is in the
event log exactly once, and reaches a ``recover`` subscriber exactly once, in version order.

The publishers run in a network namespace joined to the stack by a veth pair, so cutting the link
(the veth down) cuts them off and nothing else. They publish identified events on a bare XPUB as
PROTOCOL.md §4.1 says (``IDENTIFIED`` below): number every event, read the confirmations, and after a
new broker subscription (a restarted broker, a reconnect) send again, in order, what is not yet
confirmed; at the end they wait until everything is confirmed (what the SDK's ``flush()`` does).
Needs root (``ip netns``); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sdk
from schemas.endpoints import Endpoints
from tests.helpers import ENV, Up, finish, pid_of, wait_for
from tests.test_faults import Collector, until_received

IDENTIFIED = r"""
import json, random, struct, sys, threading, time, zmq
from schemas.envelope import encode_body
endpoint, name = sys.argv[1], sys.argv[2]
pid = random.getrandbits(63) | 1
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
ctx = zmq.Context()
sock = ctx.socket(zmq.XPUB)
sock.setsockopt(zmq.XPUB_VERBOSE, 1)
sock.setsockopt(zmq.XPUB_NODROP, 1)
sock.sndhwm = 1000
sock.sndtimeo = 50  # a blocked send gives way to reading confirmations
sock.linger = 0
sock.connect(endpoint)
assert sock.poll(10000) and sock.recv() == b"\x01"
topic = ("load:" + name).encode()
through = 0         # confirmed through this number
sent = 0            # the highest number sent
nxt = 1             # the next number to send
again = 0           # times it sent again from the confirmed number on

def upstream(timeout_ms):
    global through, nxt, again
    while sock.poll(timeout_ms):
        timeout_ms = 0
        msg = sock.recv()
        if msg[:1] == b"\x01":  # a broker (re)subscribed: send again what it has not confirmed
            nxt, again = through + 1, again + 1
        elif msg[:1] == b"\x02":
            pos = 1
            while pos < len(msg):
                p, t, n = struct.unpack_from("!QQH", msg, pos)
                pos += 18 + 16 * n
                if p == pid and t > through:
                    through = t

def send(number):  # the identity at the end of the body (PROTOCOL.md §4.1)
    sock.send_multipart([topic, encode_body({"i": number}, source=name, session_id=None, identity=(pid, number))])

print(json.dumps({"pid": pid}), flush=True)
while not stop.is_set():
    upstream(0)
    try:
        send(nxt)
    except zmq.Again:
        continue
    sent = max(sent, nxt)
    nxt += 1
began, progress, mark = time.monotonic(), time.monotonic(), through
while through < sent:  # flush: everything sent is confirmed
    while nxt <= sent:
        upstream(0)
        try:
            send(nxt)
            nxt += 1
        except zmq.Again:
            pass
    upstream(100)
    if through > mark:
        progress, mark = time.monotonic(), through
    elif time.monotonic() - progress > 3:  # refused (out of order) and never re-sent: again
        nxt, again, progress = through + 1, again + 1, time.monotonic()
print(json.dumps({"sent": sent, "again": again, "flush_s": round(time.monotonic() - began, 2)}), flush=True)
"""
"""``python -c IDENTIFIED ENDPOINT NAME``: publishes ``load:NAME`` {"i": 1, 2, ...} as fast as it
can until a line arrives on stdin, then waits until all is confirmed and prints what it sent."""


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


def logged(home: Path) -> list[tuple[int, int, int]]:
    """(version, publisher id as stored, number) of every load event in the log, by version."""
    db = sqlite3.connect(home / "events.db")
    try:
        return db.execute(
            "SELECT version, pub_id, pub_num FROM events WHERE type LIKE 'load:%' ORDER BY version"
        ).fetchall()
    finally:
        db.close()


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
        publish = Endpoints.for_home(home).publish.replace("0.0.0.0", address)
        with sdk.connect(home, name="test", timeout=10) as bus:
            recovering = Collector(bus, "load:*", policy="recover")
            for name in names:
                pubs[name] = subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", IDENTIFIED, publish, name],
                    env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
            ids = {name: json.loads(proc.stdout.readline())["pid"] for name, proc in pubs.items()}
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
        signed = ids[name] - (1 << 64) if ids[name] >= 1 << 63 else ids[name]
        numbers = sorted(n for _v, p, n in rows if p == signed)
        assert numbers == list(range(1, reports[name]["sent"] + 1)), f"{name}: the log does not have each number once"
        assert recovering.streams[name] == list(range(1, reports[name]["sent"] + 1)), f"{name}: recover"
    assert recovering.versions == [v for v, _p, _n in rows]  # exactly the log's, in version order
    print(f"\nkill -9 x3, link cut {cut:g}s: {reports}; {len(rows)} events")
