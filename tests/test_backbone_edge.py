"""The edge on a NATS JetStream backbone (issue 19): homes on one stream see the same (version, seq)
stream, an edge restart keeps the per-topic sequences, identified publishes are stored once and
confirmed with their stream sequence (replay, since and recover: tests/test_backbone_replay.py)."""

from __future__ import annotations

import asyncio
import select
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

import sdk
from schemas.endpoints import Endpoints
from schemas.envelope import CONFIRM, WANT_VERSION, parse_confirm
from tests.helpers import control, start_part, stats, wait_for


def edge(xprocess, home: Path, cluster, stream: str, *extra: str, command: str = "edge"):
    return start_part(xprocess, home, command, "--backbone", cluster.servers, "--stream", stream, *extra)


def received(sub, n: int) -> list[tuple[int, int, str, object]]:
    return [(e.version, e.seq, e.type, e.payload) for e in (sub.recv(timeout=10) for _ in range(n))]


def test_two_homes_on_one_backbone_see_identical_version_and_seq_streams(xprocess, cluster, stream, homes) -> None:
    a, b = homes(), homes()
    up = edge(xprocess, a, cluster, stream, command="up")  # up --backbone: the edge under the supervisor
    other = edge(xprocess, b, cluster, stream)
    try:
        with sdk.connect(a, name="pa", timeout=5.0) as bus_a, sdk.connect(b, name="pb", timeout=5.0) as bus_b:
            with bus_a.subscribe() as sub_a, bus_b.subscribe() as sub_b:
                for i in range(60):  # both homes publish, interleaved, on shared and own types
                    bus_a.publish("chat:msg" if i % 2 else "a:only", {"from": "a", "i": i})
                    bus_b.publish("chat:msg" if i % 3 else "b:only", {"from": "b", "i": i})
                seen_a, seen_b = received(sub_a, 120), received(sub_b, 120)
        assert seen_a == seen_b
        assert [v for v, *_ in seen_a] == list(range(1, 121))
        for topic in ("chat:msg", "a:only", "b:only"):
            seqs = [s for _, s, t, _ in seen_a if t == topic]
            assert seqs == list(range(1, len(seqs) + 1))
        assert sorted((p["from"], p["i"]) for *_, p in seen_a) == sorted(
            [("a", i) for i in range(60)] + [("b", i) for i in range(60)]
        )
    finally:
        up.stop()
        other.stop()


def test_an_edge_restart_keeps_the_topic_sequences(xprocess, cluster, stream, homes) -> None:
    a, b = homes(), homes()
    first = edge(xprocess, a, cluster, stream, "--checkpoint-every", "7", "--replicas", "1")
    stays = edge(xprocess, b, cluster, stream)
    with sdk.connect(a, name="pa", timeout=5.0) as bus:
        with bus.subscribe() as sub:
            for i in range(20):
                bus.publish("x:y", {"i": i})
            before = received(sub, 20)
    first.stop()
    with sdk.connect(b, name="pb", timeout=5.0) as bus:  # events while home a's edge is down
        for i in range(20, 25):
            bus.publish("x:y", {"i": i})
    second = edge(xprocess, a, cluster, stream, "--checkpoint-every", "7", "--replicas", "1")
    try:
        with sdk.connect(a, name="pa2", timeout=5.0) as bus, sdk.connect(b, name="pb2", timeout=5.0) as bus_b:
            assert bus.stats()["backbone"]["counted_from"] > 0  # it started from a checkpoint
            with bus.subscribe() as sub, bus_b.subscribe() as sub_b:
                for i in range(25, 30):
                    bus.publish("x:y", {"i": i})
                after, after_b = received(sub, 5), received(sub_b, 5)
        assert [(v, s) for v, s, *_ in before] == [(v, v) for v in range(1, 21)]
        assert after == after_b == [(v, v, "x:y", {"i": v - 1}) for v in range(26, 31)]
    finally:
        second.stop()
        stays.stop()


def test_a_curve_home_lets_in_only_a_listed_key(xprocess, cluster, stream, homes) -> None:
    """``up --backbone --curve``: the edge's sockets and the nats-kv session service are CURVE
    servers behind the home's allow-list, as the broker's (the cases of tests/test_auth.py)."""
    from sdk.sessions import SessionClient
    from tests.test_auth import REFUSED_TIMEOUT, cases, generate

    home = homes()
    generate(home)
    up = edge(xprocess, home, cluster, stream, "--curve", "--replicas", "1", command="up")
    try:
        for what, curve in cases(home).items():
            with pytest.raises(sdk.BusUnavailable):
                sdk.connect(home, timeout=REFUSED_TIMEOUT, curve=curve).close()
                pytest.fail(f"the edge let in a client with {what}")
            client = SessionClient.open(home, timeout=REFUSED_TIMEOUT, retries=0, curve=curve)
            try:
                with pytest.raises(sdk.BusUnavailable):
                    client.list()
                    pytest.fail(f"the session service let in a client with {what}")
            finally:
                client.close()
        with sdk.connect(home, name="listed", timeout=5.0) as bus:  # the home's keys: CURVE
            assert bus.curve is not None
            with bus.subscribe("auth:*") as sub:
                assert bus.publish("auth:checked", {"n": 1}, wait=True) == 1
                assert received(sub, 1) == [(1, 1, "auth:checked", {"n": 1})]
            assert [e.payload for e in bus.replay()] == [{"n": 1}]  # the log endpoint
            session = bus.sessions.create("behind CURVE")
            assert bus.sessions.get(session.id).title == "behind CURVE"
    finally:
        up.stop()


def _identified_body(payload: object, publisher: int, number: int) -> bytes:
    """The identity contract's 7-element body: publisher id and number always as msgpack uint64."""
    head = b"\x97" + b"".join(msgpack.packb(x, use_bin_type=True) for x in (1, time.time(), "raw", None, payload))
    return head + b"\xcf" + publisher.to_bytes(8, "big") + b"\xcf" + number.to_bytes(8, "big")


def test_identified_events_are_stored_once_and_confirmed_with_their_version(xprocess, cluster, stream, homes) -> None:
    home = homes()
    part = edge(xprocess, home, cluster, stream)
    ep = Endpoints.for_home(home)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 0
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.connect(ep.publish)
    try:
        assert pub.poll(5000) and pub.recv() == b"\x01"  # the edge's subscription: publishing is live
        a, b = 0x1111, 0x2222
        frames = [
            [b"id:ev", _identified_body("a1", a, 1)],
            [b"id:ev", _identified_body("a2", a, 2 | WANT_VERSION)],
            [b"id:ev", _identified_body("b1", b, 1 | WANT_VERSION)],
            [b"id:ev", _identified_body("b2", b, 2)],
        ]
        for f in frames + frames:  # everything sent twice, as a publisher resends after a reconnect
            pub.send_multipart(f)
        confirmed: dict[int, int] = {}
        versions: dict[tuple[int, int], int] = {}
        deadline = time.monotonic() + 10
        while confirmed != {a: 2, b: 2}:
            assert pub.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"confirmed so far: {confirmed}"
            msg = pub.recv()
            if msg[:1] != CONFIRM:
                continue
            for publisher, through, pairs in parse_confirm(msg):
                confirmed[publisher] = max(confirmed.get(publisher, 0), through)
                for number, version in pairs:
                    versions.setdefault((publisher, number), version)
        wait_for(lambda: stats(ctx, ep.control), lambda s: s["events_in"] == 8, what="all eight sends taken")
        reply = control(ctx, ep.log, {"op": "replay", "patterns": ["id:ev"]})  # raw: 7-element bodies too
        stored = [(v, s, msgpack.unpackb(body)[4]) for v, s, _, body in reply["result"]["events"]]
        assert stored == [(1, 1, "a1"), (2, 2, "a2"), (3, 3, "b1"), (4, 4, "b2")]  # each once
        assert versions[(a, 2)] == 2 and versions[(b, 1)] == 3
    finally:
        pub.close()
        ctx.term()
        part.stop()


def test_an_identified_event_past_a_hole_is_refused_until_the_hole_is_filled(xprocess, cluster, stream, homes) -> None:
    """As the broker does (PROTOCOL.md 4.1): taking number 4 after 2 would let the cumulative
    confirmation through 4 cover a lost 3 (events dropped with a connection held back too long)."""
    home = homes()
    part = edge(xprocess, home, cluster, stream)
    ep = Endpoints.for_home(home)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 0
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.connect(ep.publish)
    publisher = 0x4011

    def confirmed_through(number: int) -> None:
        through = 0
        deadline = time.monotonic() + 10
        while through < number:
            assert pub.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"confirmed through {through}"
            msg = pub.recv()
            if msg[:1] == CONFIRM:
                through = max([through] + [t for p, t, _ in parse_confirm(msg) if p == publisher])
        assert through == number

    try:
        assert pub.poll(5000) and pub.recv() == b"\x01"
        for number in (1, 2, 4):
            pub.send_multipart([b"hole:ev", _identified_body(number, publisher, number)])
        confirmed_through(2)
        assert wait_for(lambda: stats(ctx, ep.control), lambda s: s["out_of_order"] == 1,
                        what="4 refused")["events_in"] == 2
        for number in (3, 4):  # the publisher sends again, in order, what is not confirmed
            pub.send_multipart([b"hole:ev", _identified_body(number, publisher, number)])
        confirmed_through(4)
        reply = control(ctx, ep.log, {"op": "replay", "patterns": ["hole:ev"]})
        assert [(v, msgpack.unpackb(body)[4]) for v, _, _, body in reply["result"]["events"]] == [
            (1, 1), (2, 2), (3, 3), (4, 4)]
    finally:
        pub.close()
        ctx.term()
        part.stop()


def test_an_event_that_arrives_as_the_edge_confirms_is_taken(cluster, stream, homes) -> None:
    """zmq.asyncio wakes a receive from its socket's edge-triggered FD, and any operation on the
    socket may consume that wake-up. The edge confirms on the socket it takes events from: a
    confirmation sent in the turn an event arrived must still let that event, and the ones after
    it, be taken (the filters test's burst that stopped after 13 of 1,000 events). The edge runs
    in this process, so that the test can hold its loop for that turn."""
    from broker.backbone.edge import Edge, EdgeConfig
    from tests.fronts import LoopThread

    edge = Edge(EdgeConfig(servers=cluster.urls, stream=stream, replicas=1, endpoints=Endpoints.ipc(homes())))
    loop = LoopThread()
    ready = threading.Event()
    running = asyncio.run_coroutine_threadsafe(edge.run(lambda _: ready.set()), loop.loop)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 0
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    publisher = 0x5EED
    holding = threading.Event()

    def confirmed_through(number: int) -> None:
        through = 0
        deadline = time.monotonic() + 10
        while through < number:
            assert pub.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"{through} of {number} confirmed"
            msg = pub.recv()
            if msg[:1] == CONFIRM:
                through = max([through] + [t for p, t, _ in parse_confirm(msg) if p == publisher])

    async def hold() -> bool:
        """One turn of the edge's loop (no await): the next event arrives, then the edge confirms."""
        fd = edge.xsub.get(zmq.FD)
        edge.xsub.get(zmq.EVENTS)  # its pending commands handled: the FD now signals only what comes next
        holding.set()
        if not select.select([fd], [], [], 10)[0]:
            return False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            edge.to_publishers(CONFIRM)
            if not select.select([fd], [], [], 0)[0]:  # the send handled the event's arrival
                return True
            # libzmq's send handles commands at most every ~1 ms; sending on at once would fill the
            # pipe to the publisher, whose draining wakes the socket too.
            time.sleep(0.001)  # sync-ok: the loop is held on purpose; its end is the FD's change
        return False

    try:
        assert ready.wait(30), "the edge did not start"
        pub.connect(edge.endpoints.publish)
        assert pub.poll(5000) and pub.recv() == b"\x01"
        pub.send_multipart([b"held:ev", _identified_body(1, publisher, 1)])
        confirmed_through(1)  # the edge waits for the next event meanwhile
        held = asyncio.run_coroutine_threadsafe(hold(), loop.loop)
        assert holding.wait(10)
        pub.send_multipart([b"held:ev", _identified_body(2, publisher, 2)])
        assert held.result(30), "the event did not reach the edge's socket, or no send handled it"
        confirmed_through(2)
    finally:
        pub.close()
        ctx.term()
        loop.loop.call_soon_threadsafe(edge.stop)
        running.result(10)
        loop.run(_cancel_the_rest)  # nats-py's own tasks, as asyncio.run would at the end
        loop.close()


async def _cancel_the_rest() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_batches_reach_the_stream_event_by_event(xprocess, cluster, stream, homes) -> None:
    home = homes()
    part = edge(xprocess, home, cluster, stream)
    try:
        with sdk.connect(home, name="batcher", timeout=5.0) as bus, bus.subscribe() as sub:
            events = [("b:one" if i % 50 < 40 else "b:two", i) for i in range(300)]  # runs of 40 and 10
            assert bus.publish_many(events) == 300
            seen = received(sub, 300)
    finally:
        part.stop()
    assert [v for v, *_ in seen] == list(range(1, 301))
    assert [p for *_, p in seen] == list(range(300))
    for topic in ("b:one", "b:two"):
        assert [s for _, s, t, _ in seen if t == topic] == list(range(1, (240 if topic == "b:one" else 60) + 1))


def _leader(cluster, stream: str) -> str:
    import asyncio

    async def ask() -> str:
        import nats

        nc = await nats.connect(cluster.servers.split(","), connect_timeout=5)
        try:
            return (await nc.jetstream(timeout=10).stream_info(stream)).cluster.leader
        finally:
            await nc.close()

    return asyncio.run(ask())


def _replicas_settled(cluster, stream: str) -> tuple[int, list[tuple[str, bool, int]]]:
    import asyncio

    async def ask() -> tuple[int, list[tuple[str, bool, int]]]:
        import nats
        from nats.errors import Error as NatsError

        nc = await nats.connect(cluster.servers.split(","), connect_timeout=5)
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
            return info.state.last_seq, sorted((r.name, bool(r.current), r.lag or 0) for r in info.cluster.replicas or [])
        except (NatsError, asyncio.TimeoutError):  # no answer while the stream settles: ask again
            return 0, []
        finally:
            await nc.close()

    return asyncio.run(ask())


def _kill_the_leader_under_load(xprocess, cluster, stream: str, home: Path, n: int, kill_at: int, *, rejoin: bool) -> None:
    """Publish ``n`` identified events through an edge, kill -9 the stream's leader after
    ``kill_at`` were confirmed, and check: every event confirmed and stored once, versions gapless
    and delivered in order to a subscriber, the replicas equal: the surviving one at once, and with
    ``rejoin`` the killed one too once it is back."""
    part = edge(xprocess, home, cluster, stream, "--replicas", "3")
    ep = Endpoints.for_home(home)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 0
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.sndhwm = 0
    pub.connect(ep.publish)
    killed = None
    try:
        with sdk.connect(home, name="t", timeout=5.0) as bus, bus.subscribe("load:*") as sub:
            assert pub.poll(5000) and pub.recv() == b"\x01"
            publisher, through, sent = 0x5EED, 0, 0
            deadline = time.monotonic() + 120
            while through < n:
                while sent < n and sent - through < 200:  # a window of unconfirmed events in flight
                    sent += 1
                    pub.send_multipart([b"load:ev", _identified_body(sent, publisher, sent)])
                if killed is None and through >= kill_at:
                    name = _leader(cluster, stream)
                    killed = next(node for node in cluster.members if node.name == name)
                    cluster.kill(killed)
                assert pub.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"confirmed through {through} of {n}"
                msg = pub.recv()
                if msg[:1] == CONFIRM:
                    through = max([through] + [t for p, t, _ in parse_confirm(msg) if p == publisher])
            got = [sub.recv(timeout=30) for _ in range(n)]
        assert [e.version for e in got] == list(range(1, n + 1))  # gapless, none reused, in order
        assert sorted(e.payload for e in got) == list(range(1, n + 1))  # each event once
        # Right after a failover the edge may wait for JetStream to create its reader (503s meanwhile).
        stored: list[int] = []
        for _ in range(n // 20_000 + 1):  # pages of at most 20,000 (the soak's n is 50,000)
            reply = control(ctx, ep.log, {"op": "replay", "since": stored[-1] if stored else 0, "limit": 20_000},
                            timeout=40)["result"]
            stored += [row[0] for row in reply["events"]]
        assert stored == list(range(1, n + 1)) and reply["done"]
        if rejoin:
            cluster.start_node(killed)
        settled = wait_for(lambda: _replicas_settled(cluster, stream),
                           lambda s: s[0] == n and sum(current and lag == 0 for _, current, lag in s[1]) == (2 if rejoin else 1),
                           timeout=60, what="the replicas caught up")
        assert settled[0] == n
    finally:
        pub.close()
        ctx.term()
        part.stop()
        if killed is not None and killed.proc is not None and killed.proc.poll() is not None:
            cluster.start_node(killed)  # the next tests create R3 streams: they need every node
            cluster.wait_ready()


def test_a_leader_kill_9_under_load_loses_and_repeats_nothing(xprocess, cluster, stream, homes) -> None:
    _kill_the_leader_under_load(xprocess, cluster, stream, homes(), n=300, kill_at=100, rejoin=False)


@pytest.mark.soak
def test_a_leader_kill_9_under_heavy_load_loses_and_repeats_nothing(xprocess, cluster, stream, homes) -> None:
    _kill_the_leader_under_load(xprocess, cluster, stream, homes(), n=50_000, kill_at=20_000, rejoin=True)


def test_an_edge_whose_cluster_is_gone_stops_at_once_and_says_so(stream, homes, tmp_path) -> None:
    """docs/backbone.md, Stopping: with no NATS server reachable a stop writes no checkpoint (which
    would wait for an answer) and says so; the edge exits cleanly. On a node of its own, killed
    (the shared cluster would take seconds to elect its leaders again)."""
    import queue
    import signal
    import subprocess
    import sys
    import threading

    from broker.backbone.cluster import Cluster
    from tests.backbone import server_or_skip
    from tests.helpers import REPO

    with Cluster(tmp_path / "nats", nodes=1, server=server_or_skip()) as lone:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "broker", "edge", "--backbone", lone.servers, "--stream", stream,
             "--replicas", "1", "--home", str(homes())],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
        reader.start()

        def wait_line(text: str) -> None:
            seen: list[str] = []
            while not any(text in line for line in seen):
                try:
                    seen.append(lines.get(timeout=30))
                except queue.Empty:
                    pytest.fail(f"no line with {text!r} within 30 s; saw {seen}")

        try:
            wait_line("pryxbus edge ready")
            lone.kill(lone.members[0])
            wait_line("nats: disconnected")  # the edge knows the cluster is gone
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            reader.join(timeout=10)  # every line read
            output = "".join(lines.queue)
            assert "stopping without a checkpoint: no NATS server is reachable" in output
            assert "pryxbus edge stopped at version 0" in output
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_an_edge_publishes_lifecycle_events_into_the_stream(xprocess, cluster, stream, homes) -> None:
    """``up --backbone --lifecycle-events``: the edge announces its start and its own connections,
    stamped in the stream like every event, so another home's subscribers see them in order."""
    from schemas.catalogue import validate

    a, b = homes(), homes()
    up = start_part(xprocess, a, "up", "--backbone", cluster.servers, "--stream", stream, "--lifecycle-events")
    quiet = edge(xprocess, b, cluster, stream)  # without the option: announces nothing
    try:
        with sdk.connect(b, name="watcher", timeout=10.0) as watcher, watcher.subscribe("bus:*") as sub:

            def next_event(event_type: str) -> sdk.Event:
                event = sub.recv(timeout=10.0)
                assert event.type == event_type and event.source == "broker" and event.session_id is None, event
                validate(event.type, event.payload)  # the catalogue's payload, as from a broker
                return event

            with sdk.connect(a, name="publisher", timeout=10.0) as bus:
                bus.publish("app:hello", {"n": 1})
                connected = next_event("bus:publisher_connected")
                assert connected.payload["endpoint"] == bus.endpoints.publish
                assert (connected.payload["publishers"], connected.payload["subscribers"]) == (1, 0)
                second = bus.subscribe("app:*")
                joined = next_event("bus:subscriber_connected")
                assert (joined.payload["subscribers"], joined.payload["endpoint"]) == (1, bus.endpoints.subscribe)
                second.close()
                left = next_event("bus:subscriber_disconnected")
                assert left.payload["connection"] == joined.payload["connection"] and left.payload["subscribers"] == 0
            gone = next_event("bus:publisher_disconnected")
            assert gone.payload["connection"] == connected.payload["connection"] and gone.payload["publishers"] == 0
            assert connected.version < joined.version < left.version < gone.version
            assert [e.seq for e in (connected, joined, left, gone)] == [1, 1, 1, 1]
            started = list(watcher.replay("bus:started"))
            assert [(e.version, e.seq, e.payload["first_version"]) for e in started] == [(1, 1, 1)]
            ctx = zmq.Context()
            try:  # counted once the edge had its ack (the watcher may see the event first)
                counted = wait_for(lambda: stats(ctx, Endpoints.for_home(a).control),
                                   lambda s: s["lifecycle_events"] == 5, what="5 lifecycle events stored")
            finally:
                ctx.destroy(linger=0)
            assert (counted["publishers"], counted["subscribers"]) == (0, 0)
    finally:
        quiet.stop()
        up.stop()


def test_events_are_limited_to_what_a_nats_message_holds(xprocess, cluster, stream, homes) -> None:
    """The servers' max_payload (1 MiB by default) must hold an event's body with its topic and
    ``Nats-Msg-Id`` header: the edge lowers its max_event_size to fit and says so in ``ping``, so
    the SDK refuses a bigger event before sending anything (MessageTooLarge), the largest that
    fits is stored, and nothing is refused on the way (once, a 1 MiB body passed the edge's check,
    was never storable, and either blocked every later confirmation or closed the connection)."""
    from broker.backbone.edge import STREAM_MESSAGE_SLACK
    from schemas.envelope import DEFAULT_MAX_EVENT_SIZE

    home = homes()
    part = edge(xprocess, home, cluster, stream)
    ep = Endpoints.for_home(home)
    ctx = zmq.Context()
    try:
        limit = control(ctx, ep.control, {"op": "ping"})["result"]["max_event_size"]
        assert limit == DEFAULT_MAX_EVENT_SIZE - STREAM_MESSAGE_SLACK  # the servers' default max_payload: 1 MiB
        with sdk.connect(home, name="big", timeout=10.0) as bus:
            with pytest.raises(sdk.MessageTooLarge):
                bus.publish("big:ev", "x" * limit)
            first = bus.publish("big:ev", "small", wait=True)
            largest = bus.publish("big:ev", "x" * (limit - 100), wait=True)
        assert largest == first + 1
        s = stats(ctx, ep.control)
        assert (s["refused"], s["rejected"], s["events_in"]) == (0, 0, 2)
        reply = control(ctx, ep.log, {"op": "replay", "patterns": ["big:ev"]})
        assert [len(msgpack.unpackb(body)[4]) for _, _, _, body in reply["result"]["events"]] == [5, limit - 100]
    finally:
        ctx.term()
        part.stop()
