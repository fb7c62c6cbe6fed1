"""``pryxbus bench --scenario backbone``: edges on a NATS JetStream cluster against nats-py's own
JetStream publish and consume, in the same run, on the same local 3-node cluster (docs/backbone.md).

Figures, for R1 and R3 streams: 1→1 within one home (SDK publisher → edge → stream → the same
edge → SDK subscriber) and across two homes (publisher at one edge, subscriber at another); the
edge's CPU per event; replay through ``bus.replay``; the confirm round trip of an identified
publish (want-version) p50/p99; session ``create`` and ``get`` through the session service on
the key-value bucket (``--store nats-kv``); with R3, the failover stall: from a ``kill -9`` of the
stream's leader to the next confirmed publish. nats-py's: async publish with a window of 4,000 in
flight (and the same with the edges' work: a ``Nats-Msg-Id`` per message, two ordered
consumers reading everything), ordered-consumer replay, a synchronous ``js.publish`` round trip, ``kv.create``/``kv.get``
on a bucket of the same replication, and the same stall for ``js.publish`` retried until it
succeeds. Session ``create`` is also compared with the single-host floor: a REQ/REP sidecar that
makes one SQLite commit per request (``bench.peers``). The ratios compare pryxbus with the peer
figure of the same kind and replication.
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

from bench.backbone_nats import (
    PAYLOAD,
    cpu_of,
    cpu_seconds,
    kill_leader,
    restart_node,
    nats_edges_work,
    nats_failover,
    nats_kv,
    nats_publish,
    nats_publish_latency,
    nats_replay,
)
from bench.sides import Side, SideError


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


def _kv_sessions(home: Path, servers: str, stream: str, replicas: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "session-service", "--store", "nats-kv", "--home", str(home),
         "--backbone", servers, "--stream", stream, "--replicas", str(replicas)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("pryxbus session-service ready"):
            return proc
    raise RuntimeError(f"the session service in {home} did not start (exit {proc.wait()})")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def pryxbus_pubsub(pub_home: Path, sub_home: Path, n: int, edge_pid: int, others: list[int]) -> dict[str, float]:
    """1->1 through the edges; the CPU of the publishing edge, and of every process of the run
    (``others``: the edges and the nodes; and the publisher and the subscriber) per event."""
    sub = Side("bench-sub", _subscriber, str(sub_home), n)
    pub = None
    try:
        sub.expect("ready", 60)
        pub = Side("bench-pub", _publisher, str(pub_home), n)
        pub.expect("ready", 60)
        every = sorted({*others, edge_pid, pub.pid, sub.pid})
        cpu, total = cpu_seconds(edge_pid), cpu_of(every)
        pub.send("go")
        sent = pub.expect("result", 300)
        got = sub.expect("result", 300)
        cpu, total = cpu_seconds(edge_pid) - cpu, cpu_of(every) - total
    finally:
        for side in (pub, sub):
            if side is not None:
                side.stop()
    return {"rate": n / ((got["end"] - sent["start"]) / 1e9), "lost": got["lost"], "edge_cpu_us": cpu / n * 1e6,
            "total_cpu_us": total / n * 1e6}


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


def pryxbus_sessions(home: Path, ops: int) -> dict[str, float]:
    """Session ``create`` then ``get`` per second, one client in a closed loop."""
    import sdk

    with sdk.connect(home, name="bench-sessions", timeout=30.0) as bus:
        sessions = bus.sessions
        sessions.create("warm-up")
        start = time.perf_counter()
        made = [sessions.create("bench session").id for _ in range(ops)]
        create = ops / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(ops):
            sessions.get(made[i])
        get = ops / (time.perf_counter() - start)
    return {"create": create, "get": get}


def sidecar_create(ops: int) -> float:
    """The single-host floor of a durable create: REQ/REP to a process making one SQLite commit."""
    import msgpack
    import zmq

    from bench.peers import start_sidecar

    workdir = Path(tempfile.mkdtemp(prefix="pxb-bb-sidecar-", dir="/tmp"))
    server = start_sidecar(workdir)
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(server.wiring["endpoint"])
        request = msgpack.packb({"op": "create", "title": "bench session"})
        req.send(request)
        req.recv()
        start = time.perf_counter()
        for _ in range(ops):
            req.send(request)
            req.recv()
        return ops / (time.perf_counter() - start)
    finally:
        req.close()
        ctx.term()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def pryxbus_failover(cluster: Any, home: Path, stream: str, rounds: int) -> float:
    """Seconds from a kill -9 of the stream's leader to the confirmation of the next identified
    publish (sent right after the kill), after ``rounds`` confirmed ones."""
    import msgpack
    import zmq

    from schemas.endpoints import Endpoints
    from schemas.envelope import CONFIRM, identify, parse_confirm

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 0
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.connect(Endpoints.for_home(home).publish)
    publisher = int.from_bytes(os.urandom(8), "big") | 1
    body = msgpack.packb([1, time.time(), "bench", None, {"b": "x" * PAYLOAD}])

    def confirmed(number: int) -> None:
        pub.send_multipart([b"bench:failover", identify(body, publisher, number)])
        while True:
            if not pub.poll(120_000):
                raise RuntimeError(f"no confirmation of event {number} within 120 s")
            msg = pub.recv()
            if msg[:1] == CONFIRM and any(p == publisher and t >= number for p, t, _ in parse_confirm(msg)):
                return

    node = None
    try:
        if not pub.poll(10_000):
            raise RuntimeError("no subscription from the edge")
        pub.recv()
        for number in range(1, rounds + 1):
            confirmed(number)
        node, killed_at = kill_leader(cluster, stream)
        confirmed(rounds + 1)
        return time.perf_counter() - killed_at
    finally:
        pub.close()
        ctx.term()
        if node is not None:
            restart_node(cluster, node)


def _pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def run(quick: bool, out: Path) -> int:
    """Run the backbone bench; print the table, write ``out/backbone.json`` and ``out/backbone.md``."""
    from broker.backbone.cluster import Cluster, ServerMissing

    n = 5_000 if quick else 20_000
    rounds = 200 if quick else 1000
    ops = 200 if quick else 1000
    directory = Path(tempfile.mkdtemp(prefix="pxb-bench-nats-", dir="/tmp"))
    rows: list[tuple[str, str, float, str, float | None, str]] = []  # (figure, R, pryxbus, unit, peer, peer's name)
    try:
        try:
            cluster = Cluster(directory / "nats", nodes=3)
        except ServerMissing as e:
            print(f"bench backbone: skipped: {e}")
            return 0
        with cluster:
            servers = cluster.urls
            sidecar = sidecar_create(ops)
            for replicas in (1, 3):
                tag = f"R{replicas}"
                homes = [Path(tempfile.mkdtemp(prefix="pxb-bb-", dir="/tmp")) for _ in range(2)]
                edges = [_edge(h, cluster.servers, f"PB{replicas}", replicas) for h in homes]
                sessions = None
                try:
                    # nats-py's publish right before each pryxbus run it is compared with (A, B, A, B).
                    nodes = [node.pid for node in cluster.members if node.pid]
                    every = nodes + [e.pid for e in edges]
                    nats_one = asyncio.run(nats_publish(servers, f"NB{replicas}", replicas, n, nodes))
                    one = pryxbus_pubsub(homes[0], homes[0], n, edges[0].pid, every)
                    nats_across = asyncio.run(nats_publish(servers, f"NB{replicas}x", replicas, n, nodes))
                    across = pryxbus_pubsub(homes[0], homes[1], n, edges[0].pid, every)
                    nats_work = nats_edges_work(servers, f"NB{replicas}w", replicas, n)
                    nats_replay_rate = asyncio.run(nats_replay(servers, f"NB{replicas}", n))
                    replay = pryxbus_replay(homes[1], 2 * n)
                    rows += [
                        ("1→1 within one home", tag, one["rate"], "events/s", nats_one["rate"], "async publish"),
                        ("1→1 across two homes", tag, across["rate"], "events/s", nats_across["rate"], "async publish"),
                        ("1→1 across two homes", tag, across["rate"], "events/s", nats_work,
                         "the edges' work: Nats-Msg-Id, two consumers"),
                        ("edge CPU per event (publishing edge, 1→1 across)", tag, across["edge_cpu_us"], "µs", None, ""),
                        ("CPU per event, every process of the run (1→1 across)", tag, across["total_cpu_us"], "µs",
                         nats_across["total_cpu_us"], "async publish: client and nodes"),
                        ("replay", tag, replay, "events/s", nats_replay_rate, "ordered consumer"),
                    ]
                    sessions = _kv_sessions(homes[0], cluster.servers, f"PB{replicas}", replicas)
                    mine_kv = pryxbus_sessions(homes[0], ops)
                    theirs_kv = asyncio.run(nats_kv(servers, f"nb-kv-{replicas}", replicas, ops))
                    rows += [
                        ("session create (nats-kv store)", tag, mine_kv["create"], "ops/s", theirs_kv["create"], "kv.create"),
                        ("session create (nats-kv store)", tag, mine_kv["create"], "ops/s", sidecar,
                         "SQLite sidecar, one host"),
                        ("session get (nats-kv store)", tag, mine_kv["get"], "ops/s", theirs_kv["get"], "kv.get"),
                    ]
                    if replicas == 3:
                        mine = pryxbus_confirm_latency(homes[0], rounds)
                        theirs = asyncio.run(nats_publish_latency(servers, "NB3", rounds))
                        rows += [
                            ("confirm round trip p50", tag, _pct(mine, 0.5), "ms", _pct(theirs, 0.5), "js.publish"),
                            ("confirm round trip p99", tag, _pct(mine, 0.99), "ms", _pct(theirs, 0.99), "js.publish"),
                        ]
                        stall = pryxbus_failover(cluster, homes[0], "PB3", 100)
                        theirs_stall = nats_failover(cluster, "NB3", 100)
                        rows.append(("failover stall (leader kill -9 to the next confirmed publish)", tag, stall, "s",
                                     theirs_stall, "js.publish retried"))
                    if one["lost"] or across["lost"]:
                        print(f"bench backbone: subscribers lost events ({one['lost']}, {across['lost']})")
                finally:
                    for proc in edges + ([sessions] if sessions else []):
                        _stop(proc)
                    for h in homes:
                        shutil.rmtree(h, ignore_errors=True)
    except (SideError, RuntimeError, OSError, TimeoutError) as e:
        print(f"bench backbone: FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lines = [
        f"# pryxbus on a NATS JetStream backbone vs nats-py ({n} events of {PAYLOAD} B, 3 loopback nodes,"
        f" {time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "| figure | stream | pryxbus | peer | ratio |",
        "|---|---|---|---|---|",
    ]
    for figure, tag, mine_v, unit, theirs_v, peer in rows:
        ratio = f"{mine_v / theirs_v:.2f}×" if theirs_v else ""
        theirs_s = f"{theirs_v:,.{3 if unit == 's' else 1}f} {unit} ({peer})" if theirs_v else "—"
        lines.append(f"| {figure} | {tag} | {mine_v:,.{3 if unit == 's' else 1}f} {unit} | {theirs_s} | {ratio} |")
    lines += ["", "Peers: nats-py on the same cluster, its async publish (a window of 4,000) measured right before"
              " each 1→1 run; the edges' work: the same publish with a Nats-Msg-Id each, read whole by two ordered consumers in processes of their own (what two homes' edges do), the rate once both have every message; replay with an ordered consumer; confirm with a synchronous js.publish; kv.create/"
              "kv.get on a bucket of the same replication; the stall with js.publish retried (50 ms doubling"
              " to 2 s). The SQLite sidecar: REQ/REP to a process making one SQLite commit per request (WAL,"
              " synchronous=FULL), the single-host floor of a durable create. For a stall, lower is better."]
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbone.md").write_text(text + "\n")
    (out / "backbone.json").write_text(json.dumps(
        [{"figure": f, "stream": t, "pryxbus": m, "unit": u, "peer": o, "peer_name": pn} for f, t, m, u, o, pn in rows],
        indent=1,
    ))
    return 0
