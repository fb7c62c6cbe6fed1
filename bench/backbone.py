"""``pryxbus bench --scenario backbone``: edges on a NATS JetStream cluster against nats-py's own
JetStream publish and consume, in the same run, on the same local 3-node cluster (docs/backbone.md).

Figures, for R1 and R3 streams: 1→1 within one home (SDK publisher → edge → stream → the same
edge → SDK subscriber) and across two homes (publisher at one edge, subscriber at another); the
edge's CPU per event; replay through ``bus.replay``; the confirm round trip of an identified
publish (want-version) p50/p99. nats-py's: async publish with a window of 4,000 in flight,
ordered-consumer replay, and a synchronous ``js.publish`` round trip. The ratios compare pryxbus
with nats-py's figure of the same kind and replication.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sides import Side, SideError

WINDOW = 4000
PAYLOAD = 64


def _edge(home: Path, servers: str, stream: str, replicas: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "edge", "--home", str(home), "--backbone", servers, "--stream", stream,
         "--replicas", str(replicas)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("pryxbus edge ready"):
            return proc
    raise RuntimeError(f"the edge in {home} did not start (exit {proc.wait()})")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _subscriber(conn: Any, home: str, n: int) -> None:
    import sdk

    with sdk.connect(home, name="bench-sub", timeout=30.0) as bus, bus.subscribe("bench:*", policy="count") as sub:
        conn.send(("ready", None))
        got = 0
        first = None
        while got < n:
            sub.recv(timeout=60)
            got += 1
            if first is None:
                first = time.time_ns()
        conn.send(("result", {"end": time.time_ns(), "lost": sub.lost}))


def _publisher(conn: Any, home: str, n: int) -> None:
    import sdk

    payload = {"b": "x" * PAYLOAD}
    with sdk.connect(home, name="bench-pub", timeout=30.0) as bus:
        conn.send(("ready", None))
        assert conn.recv() == "go"
        start = time.time_ns()
        for _ in range(n):
            bus.publish("bench:event", payload)
        conn.send(("result", {"start": start, "sent": time.time_ns()}))


def pryxbus_pubsub(pub_home: Path, sub_home: Path, n: int, edge_pid: int) -> dict[str, float]:
    sub = Side("bench-sub", _subscriber, str(sub_home), n)
    pub = None
    try:
        sub.expect("ready", 60)
        pub = Side("bench-pub", _publisher, str(pub_home), n)
        pub.expect("ready", 60)
        cpu = _cpu_seconds(edge_pid)
        pub.send("go")
        sent = pub.expect("result", 300)
        got = sub.expect("result", 300)
        cpu = _cpu_seconds(edge_pid) - cpu
    finally:
        for side in (pub, sub):
            if side is not None:
                side.stop()
    return {"rate": n / ((got["end"] - sent["start"]) / 1e9), "lost": got["lost"], "edge_cpu_us": cpu / n * 1e6}


def pryxbus_replay(home: Path, n: int) -> float:
    import sdk

    with sdk.connect(home, name="bench-replay", timeout=60.0) as bus:
        start = time.perf_counter()
        count = sum(1 for _ in bus.replay("bench:*", since=0, until=n))
        elapsed = time.perf_counter() - start
    if count != n:
        raise RuntimeError(f"replay gave {count} of {n} events")
    return n / elapsed


def pryxbus_confirm_latency(home: Path, rounds: int) -> list[float]:
    """Round trips of one identified publish asking for its version (PROTOCOL.md §4.1) to its confirmation."""
    import msgpack
    import zmq

    from schemas.endpoints import Endpoints
    from schemas.envelope import CONFIRM, WANT_VERSION, identify, parse_confirm

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 0
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.connect(Endpoints.for_home(home).publish)
    publisher = int.from_bytes(os.urandom(8), "big") | 1
    times = []
    try:
        if not pub.poll(10_000):
            raise RuntimeError("no subscription from the edge")
        pub.recv()
        body = msgpack.packb([1, time.time(), "bench", None, {"b": "x" * PAYLOAD}])
        for number in range(1, rounds + 1):
            start = time.perf_counter()
            pub.send_multipart([b"bench:confirm", identify(body, publisher, number | WANT_VERSION)])
            while True:
                if not pub.poll(30_000):
                    raise RuntimeError(f"no confirmation of event {number}")
                msg = pub.recv()
                if msg[:1] == CONFIRM and any(p == publisher and t >= number for p, t, _ in parse_confirm(msg)):
                    break
            times.append(time.perf_counter() - start)
    finally:
        pub.close()
        ctx.term()
    return times


async def nats_publish(servers: list[str], stream: str, replicas: int, n: int) -> float:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=30, publish_async_max_pending=WINDOW)
        await js.add_stream(StreamConfig(name=stream, subjects=[f"nb.{stream}"], num_replicas=replicas))
        payload = b"x" * (PAYLOAD + 30)  # about a pryxbus message's size (topic and envelope)
        start = time.perf_counter()
        for _ in range(n):
            await js.publish_async(f"nb.{stream}", payload)
        await asyncio.wait_for(js.publish_async_completed(), 300)
        return n / (time.perf_counter() - start)
    finally:
        await nc.close()


async def nats_replay(servers: list[str], stream: str, n: int) -> float:
    import nats
    from nats.js.api import DeliverPolicy

    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=30)
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def cb(msg: Any) -> None:
            nonlocal count
            count += 1
            if count == n and not done.done():
                done.set_result(None)

        start = time.perf_counter()
        sub = await js.subscribe(f"nb.{stream}", cb=cb, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
                                 pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)
        await asyncio.wait_for(done, 300)
        elapsed = time.perf_counter() - start
        await sub.unsubscribe()
        return n / elapsed
    finally:
        await nc.close()


async def nats_publish_latency(servers: list[str], stream: str, rounds: int) -> list[float]:
    import nats

    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=30)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await js.publish(f"nb.{stream}", b"x" * (PAYLOAD + 30))
            times.append(time.perf_counter() - start)
        return times
    finally:
        await nc.close()


def _pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def run(quick: bool, out: Path) -> int:
    """Run the backbone bench; print the table, write ``out/backbone.json`` and ``out/backbone.md``."""
    from broker.backbone.cluster import Cluster, ServerMissing

    n = 5_000 if quick else 20_000
    rounds = 200 if quick else 1000
    directory = Path(tempfile.mkdtemp(prefix="pxb-bench-nats-", dir="/tmp"))
    rows: list[tuple[str, str, float, str, float | None]] = []  # (figure, R, pryxbus, unit, nats-py)
    try:
        try:
            cluster = Cluster(directory / "nats", nodes=3)
        except ServerMissing as e:
            print(f"bench backbone: skipped: {e}")
            return 0
        with cluster:
            servers = cluster.urls
            for replicas in (1, 3):
                tag = f"R{replicas}"
                nats_rate = asyncio.run(nats_publish(servers, f"NB{replicas}", replicas, n))
                nats_replay_rate = asyncio.run(nats_replay(servers, f"NB{replicas}", n))
                homes = [Path(tempfile.mkdtemp(prefix="pxb-bb-", dir="/tmp")) for _ in range(2)]
                edges = [_edge(h, cluster.servers, f"PB{replicas}", replicas) for h in homes]
                try:
                    one = pryxbus_pubsub(homes[0], homes[0], n, edges[0].pid)
                    across = pryxbus_pubsub(homes[0], homes[1], n, edges[0].pid)
                    replay = pryxbus_replay(homes[1], 2 * n)
                    rows += [
                        ("1→1 within one home", tag, one["rate"], "events/s", nats_rate),
                        ("1→1 across two homes", tag, across["rate"], "events/s", nats_rate),
                        ("edge CPU per event (publishing edge, 1→1 across)", tag, across["edge_cpu_us"], "µs", None),
                        ("replay", tag, replay, "events/s", nats_replay_rate),
                    ]
                    if replicas == 3:
                        mine = pryxbus_confirm_latency(homes[0], rounds)
                        theirs = asyncio.run(nats_publish_latency(servers, "NB3", rounds))
                        rows += [
                            ("confirm round trip p50", tag, _pct(mine, 0.5), "ms", _pct(theirs, 0.5)),
                            ("confirm round trip p99", tag, _pct(mine, 0.99), "ms", _pct(theirs, 0.99)),
                        ]
                    if one["lost"] or across["lost"]:
                        print(f"bench backbone: subscribers lost events ({one['lost']}, {across['lost']})")
                finally:
                    for proc in edges:
                        _stop(proc)
                    for h in homes:
                        shutil.rmtree(h, ignore_errors=True)
    except (SideError, RuntimeError, OSError) as e:
        print(f"bench backbone: FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lines = [
        f"# pryxbus on a NATS JetStream backbone vs nats-py ({n} events of {PAYLOAD} B, 3 loopback nodes,"
        f" {time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "| figure | stream | pryxbus | nats-py | ratio |",
        "|---|---|---|---|---|",
    ]
    for figure, tag, mine_v, unit, theirs_v in rows:
        ratio = f"{mine_v / theirs_v:.2f}×" if theirs_v else ""
        theirs_s = f"{theirs_v:,.1f} {unit}" if theirs_v else "—"
        lines.append(f"| {figure} | {tag} | {mine_v:,.1f} {unit} | {theirs_s} | {ratio} |")
    lines += ["", "nats-py: 1→1 rows compare with its async publish (window of 4,000); replay with an ordered"
              " consumer; confirm with a synchronous js.publish. Session create/get on the KV bucket: not measured yet."]
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbone.md").write_text(text + "\n")
    (out / "backbone.json").write_text(json.dumps(
        [{"figure": f, "stream": t, "pryxbus": m, "unit": u, "nats_py": o} for f, t, m, u, o in rows], indent=1
    ))
    return 0
