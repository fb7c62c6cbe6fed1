"""Sessions on a JetStream key-value bucket (issue 19, ``session-service --store nats-kv``): the
same protocol for every home of a backbone, writes by compare-and-swap, ``session:*`` events once
per change whichever home's service wrote it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

import sdk
from broker.backbone.sessions import CRASH_ENV, bucket_name
from broker.backbone.sessions import key_of as sessions_key
from schemas.endpoints import Endpoints
from tests.helpers import Part, start_part, stats, wait_for


def _stack(xprocess, home: Path, cluster, stream: str, *args: str):
    return start_part(xprocess, home, *args, "--backbone", cluster.servers, "--stream", stream)


def test_two_homes_share_sessions_by_compare_and_swap_with_one_event_per_change(xprocess, cluster, stream, homes) -> None:
    a, b = homes(), homes()
    up = _stack(xprocess, a, cluster, stream, "up")  # edge + session service on the bucket
    edge = _stack(xprocess, b, cluster, stream, "edge")  # and the same parts run one by one
    alone = _stack(xprocess, b, cluster, stream, "session-service", "--store", "nats-kv")
    touches = 20
    try:
        with sdk.connect(a, name="a", timeout=10.0) as bus_a, sdk.connect(b, name="b", timeout=10.0) as bus_b:
            with bus_a.subscribe("session:**") as events:
                outcomes: dict[str, object] = {}

                def create(bus: sdk.Bus, title: str) -> None:
                    try:
                        outcomes[title] = bus.sessions.create(title, id="s1")
                    except sdk.SessionConflict as e:
                        outcomes[title] = e

                racers = [threading.Thread(target=create, args=(bus, t)) for bus, t in ((bus_a, "from a"), (bus_b, "from b"))]
                for t in racers:
                    t.start()
                for t in racers:
                    t.join(30)
                won = [t for t, o in outcomes.items() if isinstance(o, sdk.Session)]
                assert len(won) == 1 and len(outcomes) == 2  # create-if-absent: one wins, one conflicts
                lost = next(o for o in outcomes.values() if not isinstance(o, sdk.Session))
                assert isinstance(lost, sdk.SessionConflict)

                def touch(bus: sdk.Bus) -> None:
                    for _ in range(touches):
                        bus.sessions.touch("s1")

                writers = [threading.Thread(target=touch, args=(bus,)) for bus in (bus_a, bus_b)]
                for t in writers:
                    t.start()
                for t in writers:
                    t.join(60)
                bus_b.sessions.rename("s1", "renamed")
                final = bus_a.sessions.get("s1")
                assert final.title == "renamed" and final.id == "s1"
                got = [events.recv(timeout=10) for _ in range(2 + 2 * touches)]
                with pytest.raises(sdk.BusTimeout):
                    events.recv(timeout=0.5)  # and nothing more: each change announced once
            assert [e.type for e in got] == ["session:created"] + ["session:updated"] * (2 * touches + 1)
            assert got[0].payload["title"] == won[0]
            assert got[-1].payload == {**got[-1].payload, "title": "renamed"}
            stamps = [e.payload["updated_at"] for e in got]
            assert len(set(stamps)) == len(stamps)  # every touch was a change: none lost to a race
            assert [s.id for s in bus_b.sessions.list()] == ["s1"]
            bus_a.sessions.delete("s1")
            with pytest.raises(sdk.SessionNotFound):
                bus_b.sessions.get("s1")
    finally:
        alone.stop()
        edge.stop()
        up.stop()



def test_create_is_one_write_and_still_create_if_absent(xprocess, cluster, stream, homes) -> None:
    """``create`` writes first and reads only when the key exists: a retried create returns the
    session as it is, another title conflicts, and a deleted session's id can be created again."""
    home = homes()
    up = _stack(xprocess, home, cluster, stream, "up")
    try:
        with sdk.connect(home, name="a", timeout=10.0) as bus, bus.subscribe("session:**") as events:
            first = bus.sessions.create("one", id="s1")
            assert bus.sessions.create("one", id="s1") == first  # a retried create: the session as written
            with pytest.raises(sdk.SessionConflict):
                bus.sessions.create("other", id="s1")
            bus.sessions.delete("s1")
            again = bus.sessions.create("two", id="s1")
            assert (again.title, bus.sessions.get("s1").title) == ("two", "two")
            fresh = bus.sessions.create("three")  # a new id: one write
            got = [events.recv(timeout=10) for _ in range(4)]
            with pytest.raises(sdk.BusTimeout):
                events.recv(timeout=0.5)  # and nothing more
            service = bus.sessions.stats()
        assert [(e.type, e.session_id) for e in got] == [
            ("session:created", "s1"), ("session:deleted", "s1"), ("session:created", "s1"), ("session:created", fresh.id),
        ]
        assert service["cas_retries"] == 0  # a key found to exist is not a race with another writer
    finally:
        up.stop()


def test_changes_written_but_not_announced_are_announced_once_by_the_next_service(xprocess, cluster, stream, homes) -> None:
    """What a kill -9 between a write and its event leaves (the revision in the bucket, not yet
    announced) is made deterministic with a service that writes without announcing; the next
    services announce each change once, and one killed with -9 and started again repeats none."""
    a, b = homes(), homes()
    edge = _stack(xprocess, a, cluster, stream, "edge")
    mute = _stack(xprocess, a, cluster, stream, "session-service", "--store", "nats-kv", "--no-events")
    with sdk.connect(a, name="a", timeout=10.0) as bus:
        with bus.subscribe("session:**") as events:
            bus.sessions.create("one", id="s1")
            bus.sessions.rename("s1", "two")
            bus.sessions.create("three", id="s2")
            mute.stop()
            with pytest.raises(sdk.BusTimeout):
                events.recv(timeout=0.3)  # written, not announced
            first = _stack(xprocess, a, cluster, stream, "session-service", "--store", "nats-kv")
            second = _stack(xprocess, b, cluster, stream, "session-service", "--store", "nats-kv")
            got = [events.recv(timeout=10) for _ in range(3)]
            first.kill()
            again = _stack(xprocess, a, cluster, stream, "session-service", "--store", "nats-kv")
            bus.sessions.touch("s2")  # a new change after the restart: announced once too
            got.append(events.recv(timeout=10))
            with pytest.raises(sdk.BusTimeout):
                events.recv(timeout=0.5)
    try:
        assert [(e.type, e.payload["id"], e.payload["title"]) for e in got] == [
            ("session:created", "s1", "one"), ("session:updated", "s1", "two"),
            ("session:created", "s2", "three"), ("session:updated", "s2", "three"),
        ]
    finally:
        for part in (again, second, edge):
            part.stop()


def test_a_service_stopped_cleanly_leaves_its_successor_nothing_to_publish_again(xprocess, cluster, stream, homes) -> None:
    """The shared cursor moves every CURSOR_INTERVAL, not at each change, and once more as the
    service stops: the next service, ready once it has caught up with the bucket, has published
    nothing and found nothing already stored; a session deleted with other tools (a KV delete,
    not this service's gone mark) reads as absent and can be created again."""
    home = homes()
    edge = _stack(xprocess, home, cluster, stream, "edge")
    service = _stack(xprocess, home, cluster, stream, "session-service", "--store", "nats-kv")
    ctx = zmq.Context()
    try:
        with sdk.connect(home, name="a", timeout=10.0) as bus, bus.subscribe("session:**") as events:
            for i in range(5):
                bus.sessions.create(f"s{i}", id=f"s{i}")
            got = [events.recv(timeout=10) for _ in range(5)]
            service.stop()
            service = _stack(xprocess, home, cluster, stream, "session-service", "--store", "nats-kv")
            counted = stats(ctx, Endpoints.for_home(home).sessions)
            assert (counted["events_published"], counted["events_duplicate"]) == (0, 0)
            assert [s.id for s in bus.sessions.list()] == [f"s{i}" for i in reversed(range(5))]

            async def kv_delete() -> None:
                import nats

                nc = await nats.connect(cluster.urls)
                try:
                    kv = await nc.jetstream().key_value(bucket_name(stream))
                    await kv.delete(sessions_key("s0"))
                finally:
                    await nc.close()

            asyncio.run(kv_delete())
            with pytest.raises(sdk.SessionNotFound):
                bus.sessions.get("s0")
            assert bus.sessions.create("again", id="s0").title == "again"
            got.append(events.recv(timeout=10))
        assert [(e.type, e.payload["id"]) for e in got] == [("session:created", f"s{i}") for i in range(5)] + [
            ("session:created", "s0")
        ]
    finally:
        service.stop()
        edge.stop()
        ctx.destroy(linger=0)


def _crashed(part: Part) -> None:
    """Wait until ``part`` died (SIGKILL by its own hook), then reap it."""

    def state() -> str:
        try:
            return psutil.Process(part.pid).status()
        except psutil.NoSuchProcess:
            return "gone"

    wait_for(state, lambda s: s in ("gone", psutil.STATUS_ZOMBIE), timeout=20, what=f"{part.name} killed")
    part.xprocess.getinfo(part.name).terminate()


def test_a_session_event_is_announced_once_across_a_real_kill_9_between_write_and_event(
    xprocess, cluster, stream, homes, monkeypatch
) -> None:
    """Issue 19's "Done means": the service killed with SIGKILL (PRYXBUS_TEST_KV_CRASH) at both
    points of a change, written but not announced, and announced but the shared cursor not moved;
    the service started again announces the first once and finds the second already stored
    (Nats-Msg-Id kv:BUCKET:REVISION): one event per change on the bus, and a client's retried
    create is answered without another."""
    home = homes()
    ctx = zmq.Context()
    parts = [_stack(xprocess, home, cluster, stream, "edge")]
    service = _stack(xprocess, home, cluster, stream, "session-service", "--store", "nats-kv")
    try:
        with sdk.connect(home, name="a", timeout=10.0) as bus, bus.subscribe("session:**") as events:
            bus.sessions.create("one", id="s1")
            for point, sid in (("before-event", "s2"), ("after-event", "s3")):
                service.stop()
                monkeypatch.setenv(CRASH_ENV, f"{point}:{sid}")
                doomed = _stack(xprocess, home, cluster, stream, "session-service", "--store", "nats-kv")
                monkeypatch.delenv(CRASH_ENV)
                request = ctx.socket(zmq.REQ)  # the client's create: its reply may never come
                request.linger = 0
                request.connect(Endpoints.for_home(home).sessions)
                request.send(msgpack.packb({"op": "create", "id": sid, "title": sid, "rid": f"r-{sid}"}))
                _crashed(doomed)
                request.close()
                assert f"{CRASH_ENV}={point}:{sid}: killing" in doomed.log
                service = _stack(xprocess, home, cluster, stream, "session-service", "--store", "nats-kv")
                assert bus.sessions.create(sid, id=sid).title == sid  # the client's retry: the session as written
                if point == "after-event":
                    counted = wait_for(lambda: stats(ctx, Endpoints.for_home(home).sessions),
                                       lambda s: s["events_duplicate"] == 1, what="s3's event found stored")
                    assert counted["events_published"] == 0
            bus.sessions.touch("s1")  # and a change after both restarts: once
            got = [events.recv(timeout=10) for _ in range(4)]
            with pytest.raises(sdk.BusTimeout):
                events.recv(timeout=0.5)  # nothing more: each change announced once
        assert [(e.type, e.payload["id"]) for e in got] == [
            ("session:created", "s1"), ("session:created", "s2"), ("session:created", "s3"), ("session:updated", "s1"),
        ]
        assert len({e.version for e in got}) == 4
    finally:
        service.stop()
        for part in parts:
            part.stop()
        ctx.destroy(linger=0)


def test_a_cursor_move_refused_by_the_cluster_is_made_again_and_not_taken_as_done(
    xprocess, cluster, stream, homes
) -> None:
    """The shared cursor's bucket refuses writes for a while (its stream full: JetStream answers
    each write with an error at once), long enough for one move to use up its compare-and-swap
    tries; once it takes writes again, the cursor reaches what was announced, and a successor
    after a clean stop publishes nothing again."""
    from broker.backbone import stream as layout
    from broker.backbone.sessions import CURSOR_KEY

    home = homes()
    ctx = zmq.Context()
    marks = f"KV_{layout.checkpoint_bucket(stream)}"

    async def cluster_call(what):
        import nats

        nc = await nats.connect(cluster.urls)
        try:
            return await what(nc.jetstream())
        finally:
            await nc.close()

    async def cursor(js) -> int:
        from nats.js.errors import KeyNotFoundError

        kv = await js.key_value(layout.checkpoint_bucket(stream))
        try:
            return int((await kv.get(CURSOR_KEY)).value)
        except KeyNotFoundError:  # not moved yet
            return 0

    def full(js, limit: bool):
        async def go() -> None:
            info = await js.stream_info(marks)
            config = info.config
            config.max_bytes = info.state.bytes if limit else -1
            await js.update_stream(config)
        return go()

    edge = _stack(xprocess, home, cluster, stream, "edge")
    service = _stack(xprocess, home, cluster, stream, "session-service", "--store", "nats-kv")
    endpoint = Endpoints.for_home(home).sessions
    try:
        with sdk.connect(home, name="a", timeout=10.0) as bus, bus.subscribe("session:**") as events:
            bus.sessions.create("one", id="s1")
            first = events.recv(timeout=10)
            wait_for(lambda: asyncio.run(cluster_call(cursor)), lambda c: c > 0, timeout=10, what="the cursor moved")
            moved = asyncio.run(cluster_call(cursor))
            asyncio.run(cluster_call(lambda js: full(js, True)))
            try:
                retries = stats(ctx, endpoint)["cas_retries"]
                bus.sessions.create("two", id="s2")
                second = events.recv(timeout=10)
                # a move used up its tries against the full bucket (each try counted)
                wait_for(lambda: stats(ctx, endpoint), lambda s: s["cas_retries"] >= retries + 100, timeout=20,
                         what="a move of the cursor refused")
                assert asyncio.run(cluster_call(cursor)) == moved
            finally:
                asyncio.run(cluster_call(lambda js: full(js, False)))
            wait_for(lambda: asyncio.run(cluster_call(cursor)), lambda c: c > moved, timeout=10,
                     what="the cursor moved once the bucket took writes again")
            service.stop()
            service = _stack(xprocess, home, cluster, stream, "session-service", "--store", "nats-kv")
            counted = stats(ctx, endpoint)
            assert (counted["events_published"], counted["events_duplicate"]) == (0, 0)
        assert [(e.type, e.payload["id"]) for e in (first, second)] == [("session:created", "s1"), ("session:created", "s2")]
    finally:
        service.stop()
        edge.stop()
        ctx.destroy(linger=0)
