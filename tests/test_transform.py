"""Transformations (issue 17): a transform killed with ``kill -9`` mid-stream and started again
leaves the derived stream complete, in order and without duplicates, checked against the source
events in the event log; ``pryxbus transform`` renames, projects and redacts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sdk
import sdk.aio
from broker.supervisor.metrics import StackCollector
from schemas.endpoints import Endpoints
from sdk.monitor import Sampler
from sdk.core.publishing import NUMBER_BASE
from sdk.core.transforming import publisher_id_of
from sdk.transform import REF, AsyncTransform, Transform
from tests.helpers import ENV, PUBLISHER, finish, pryxbus, python_process, wait_for, wait_logged

TRANSFORM = """
import sys, sdk
from sdk.transform import Transform

stop_at = int(sys.argv[2])

def fn(event):
    i = event.payload["i"]
    if i % 3 == 1:
        yield ("derived:one", {"i": i})
    elif i % 3 == 2:
        yield ("derived:a", {"i": i})
        if i == stop_at:  # between the two outputs of one source event: wait here to be killed
            print("blocked", event.version, flush=True)
            sys.stdin.readline()
        yield ("derived:b", {"i": i, "second": True})

with sdk.connect(sys.argv[1], name="t-kill") as bus:
    Transform(bus, ["load:*"], fn).run()
"""


def expected(source: list[sdk.Event]) -> list[tuple[str, int, int]]:
    """(type, source version, index) of every derived event the source events call for, in order."""
    out = []
    for event in source:
        i = event.payload["i"]
        if i % 3 == 1:
            out.append(("derived:one", event.version, 0))
        elif i % 3 == 2:
            out += [("derived:a", event.version, 0), ("derived:b", event.version, 1)]
    return out


def derived(bus: sdk.Bus) -> list[tuple[str, int, int]]:
    return [(e.type, *e.payload[REF]) for e in bus.replay("derived:*") if e.source == "t-kill"]


def test_a_transform_killed_mid_stream_resumes_with_nothing_lost_or_twice(home: Path, event_log, bus) -> None:
    """Killed between the two outputs of one source event, while a publisher is still sending
    source events: the next run publishes that event's second output only, then the rest."""
    n, stop_at = 3000, 1001
    finish(python_process(PUBLISHER, str(home), "src", "1200", "load:x"))
    transform = python_process(TRANSFORM, str(home), str(stop_at), stdin=True)
    publisher = python_process(PUBLISHER.replace('"i": i', '"i": 1200 + i'), str(home), "src", str(n - 1200), "load:x")
    try:
        line = transform.stdout.readline().split()
        assert line[0] == "blocked", line + [transform.stderr.read()]
        stopped = int(line[1])
        wait_for(lambda: derived(bus), lambda d: d and d[-1] == ("derived:a", stopped, 0),
                 what="the first output of the event it stopped at", timeout=30, interval=0.05)
        os.kill(transform.pid, signal.SIGKILL)
        transform.wait(10)
        before = derived(bus)
        finish(publisher)  # its events are confirmed once stamped (this broker awaits no log): wait for the log
        source = wait_for(lambda: list(bus.replay("load:*")), lambda s: len(s) >= n, what="the log holding every source event")
        assert [e.payload["i"] for e in source] == list(range(n))
        want = expected(source)
        assert before == want[: len(before)] and len(before) < len(want)
        transform = python_process(TRANSFORM, str(home), "-1")
        got = wait_for(lambda: derived(bus), lambda d: len(d) >= len(want), what="every derived event", timeout=60, interval=0.1)
        assert got == want  # complete, in source order, none twice
        assert got[: len(before)] == before
        numbers = [e.publisher for e in bus.replay("derived:*") if e.source == "t-kill"]
        assert numbers == [(publisher_id_of("t-kill"), NUMBER_BASE + 1 + k) for k in range(len(want))]
    finally:
        for proc in (transform, publisher):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_cli_transform_renames_projects_redacts_and_resumes(home: Path, event_log, bus) -> None:
    def start(*extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "transform", "audit", "agent:*", "--rename", "agent=audit",
             "--redact", "secret", "--where", "session_id != null", *extra, "--home", str(home)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )
        line = proc.stderr.readline()
        assert "running" in line, line + proc.stderr.read()
        return proc

    def audit() -> list[sdk.Event]:
        return list(bus.replay("audit:*"))

    for i in range(10):
        bus.publish("agent:spawned", {"i": i, "secret": "k", "agent_id": f"a{i}"}, session_id=None if i == 3 else "s-1")
    proc = start()
    try:
        got = wait_for(audit, lambda a: len(a) >= 9, what="9 audit events", timeout=30, interval=0.05)
        assert [e.payload for e in got] == [{"i": i, "agent_id": f"a{i}", REF: [i + 1, 0]} for i in range(10) if i != 3]
        assert {(e.type, e.source, e.session_id) for e in got} == {("audit:spawned", "audit", "s-1")}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    top = pryxbus("top", "--once", "--json", home=home)  # its last status, published as it stopped
    assert top.returncode == 0, top.stderr
    status = json.loads(top.stdout)["transforms"]["audit"]
    assert (status["running"], status["consumed"], status["published"], status["done_version"]) == (False, 9, 9, 10)
    with Sampler(Endpoints.for_home(home)) as sampler:
        metrics = {m.name: m for m in StackCollector(sampler).collect()}
    assert [s.value for s in metrics["pryxbus_transform_published"].samples] == [9]
    for i in range(10, 15):
        bus.publish("agent:done", {"i": i, "secret": "k"}, session_id="s-2")
    proc = start("--project", "{i: payload.i, kind: type}")
    try:
        got = wait_for(audit, lambda a: len(a) >= 14, what="14 audit events", timeout=30, interval=0.05)
        done = list(bus.replay("agent:done"))
        assert [e.payload for e in got[9:]] == [{"i": e.payload["i"], "kind": "agent:done", REF: [e.version, 0]} for e in done]
        assert [e.payload["i"] for e in done] == list(range(10, 15))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    bad = subprocess.run([sys.executable, "-m", "broker", "transform", "x", "a:*", "--project", "{", "--home", str(home)],
                         capture_output=True, text=True, env=ENV, timeout=30)
    assert bad.returncode == 2 and "--project: not a valid JMESPath expression" in bad.stderr


class Crash(Exception):
    """Raised by a mapper to end a transform's run in the middle of one source event's outputs."""


def test_the_asyncio_transform_resumes_from_the_log(home: Path, event_log, bus) -> None:
    """``sdk.aio``: a run ends with an error between the two outputs of one source event; the next
    run (a coroutine function this time, the same outputs) finds its progress in the log, publishes
    that event's second output only, then the rest and the live events that follow; a third run
    after a clean stop publishes nothing again. Every form of mapper result is used: none, one,
    several, an async generator, an awaited list."""
    def outputs(event: sdk.Event) -> list[tuple[str, dict]]:
        i = event.payload["i"]
        return [] if i % 3 == 0 else [("derived:one", {"i": i})] if i % 3 == 1 else [
            ("derived:a", {"i": i}), ("derived:b", {"i": i, "second": True})
        ]

    crash_at = 50

    async def crashing(event: sdk.Event):
        for k, output in enumerate(outputs(event)):
            if event.payload["i"] == crash_at and k == 1:
                raise Crash
            yield output

    async def awaited(event: sdk.Event):
        await asyncio.sleep(0)  # sync-ok: a mapper that really awaits (yields to the loop once)
        return outputs(event) or None

    def logged() -> list[tuple[str, int, int]]:
        return [(e.type, *e.payload[REF]) for e in bus.replay("derived:*") if e.source == "t-aio"]

    async def until(condition) -> None:
        for _ in range(3000):
            if condition():
                return
            await asyncio.sleep(0.01)  # sync-ok: polling the condition, bounded to 30 s
        raise AssertionError("the transform did not get there in 30 s")

    async def main() -> list[dict]:
        stats = []
        async with sdk.aio.connect(home, name="t-aio", timeout=5.0) as abus, sdk.aio.connect(home, name="src") as src:
            first = AsyncTransform(abus, ["load:*"], crashing, status_interval=0)
            with pytest.raises(Crash):
                await first.run()
            stats.append(await first.stats())
            second = AsyncTransform(abus, ["load:*"], awaited, status_interval=0)
            live = asyncio.create_task(second.run(until=lambda t: t.consumed == 2 * n - crash_at))
            await until(lambda: second.consumed == n - crash_at or live.done())
            for i in range(n, 2 * n):  # live events, after the ones from the log
                await src.publish("load:x", {"i": i})
            await asyncio.wait_for(live, 30)
            stats.append(await second.stats())
            third = AsyncTransform(abus, ["load:*"], awaited)  # with its status events
            await third.run(until=lambda t: True)  # ends after the event it redoes
            stats.append(await third.stats())
        return stats

    n = 100
    for i in range(n):
        bus.publish("load:x", {"i": i})
    wait_logged(bus, n)
    first, second, third = asyncio.run(asyncio.wait_for(main(), 90))
    source = list(bus.replay("load:*"))
    assert [e.payload["i"] for e in source] == list(range(2 * n))
    want = expected(source)
    assert (first["consumed"], first["published"]) == (crash_at + 1, len(expected(source[:crash_at])) + 1)
    assert (second["resumes"], second["skipped"], second["consumed"]) == (1, 1, 2 * n - crash_at)
    got = wait_for(logged, lambda d: len(d) >= len(want), what="every derived event", timeout=30, interval=0.05)
    assert got == want  # complete, in source order, none twice
    assert (third["resumes"], third["skipped"], third["published"]) == (1, 1, 0)
    statuses = wait_for(lambda: [e.payload for e in bus.replay("transform:status") if e.source == "t-aio.status"],
                        lambda s: s and s[-1]["running"] is False, what="the last status", timeout=10, interval=0.05)
    assert (statuses[-1]["consumed"], statuses[-1]["skipped"], statuses[-1]["name"]) == (1, 1, "t-aio")


def test_an_event_of_the_killed_run_arriving_after_the_next_run_looked_is_stamped_once(home: Path, event_log, bus) -> None:
    """The window the log alone does not close: an event the killed run had sent reaches the broker
    only after the next run looked for its progress, so the next run publishes it again. Both carry
    the transform's publisher id (from its name) and the same number (the next run numbers after
    the newest logged one): the broker stamps the first to arrive and deduplicates the other."""
    n = 30
    for i in range(n):
        bus.publish("load:x", {"i": i})

    def fn(event: sdk.Event):
        return [("derived:a", {"i": event.payload["i"]}), ("derived:b", {"i": event.payload["i"]})]

    def logged() -> list[sdk.Event]:
        return [e for e in bus.replay("derived:*") if e.source == "t-late"]

    with sdk.connect(home, name="t-late", timeout=5.0) as tbus:
        Transform(tbus, ["load:*"], fn, status_interval=0).run(until=lambda t: t.consumed == 10)
    first = logged()
    assert [(e.type, e.payload["i"]) for e in first][-2:] == [("derived:a", 9), ("derived:b", 9)]
    pid, number = first[-1].publisher
    assert pid == publisher_id_of("t-late")
    source = list(bus.replay("load:*"))

    class LateArrival(Transform):
        def progress(self):  # the killed run's next event reaches the broker just after the look
            found = super().progress()
            with sdk.connect(home, name="t-late", timeout=5.0) as killed:
                killed._number_after(pid, number)
                killed.publish("derived:a", {"i": 10, REF: [source[10].version, 0]})
                killed.flush()
            return found

    duplicates = bus.stats()["durable"]["duplicates"]
    with sdk.connect(home, name="t-late", timeout=5.0) as tbus:
        second = LateArrival(tbus, ["load:*"], fn, status_interval=0)
        second.run(until=lambda t: t.consumed == n - 9)  # event 9 again (its outputs skipped), then 10...
    assert (second.published, second.skipped) == (2 * (n - 10), 2)  # it did publish the late one again
    got = wait_for(logged, lambda d: len(d) >= 2 * n, what="every derived event", timeout=30, interval=0.05)
    assert [(e.type, e.payload["i"], *e.payload[REF]) for e in got] == [
        (t, e.payload["i"], e.version, k) for e in source for k, t in enumerate(("derived:a", "derived:b"))
    ]  # once each
    assert [e.publisher for e in got] == [(pid, NUMBER_BASE + 1 + k) for k in range(2 * n)]
    # the late one at least (a bus that saw the broker's subscription late sends its events again: more)
    assert bus.stats()["durable"]["duplicates"] >= duplicates + 1

    bus.publish("load:x", {"i": n})
    with sdk.connect(home, name="t-late", timeout=5.0) as tbus:  # a bus shared with other publishing
        def sharing(event: sdk.Event):
            tbus.publish("other:x", {"i": event.payload["i"]})
            return fn(event)

        with pytest.raises(sdk.BusError, match="a bus of its own"):
            Transform(tbus, ["load:*"], sharing, status_interval=0).run()


def test_what_a_mapper_may_return() -> None:
    """None or an empty list is no output, a tuple one, a list or a generator several (in order);
    anything else is an InvalidEvent naming what came back."""
    from sdk.transform import outputs_of

    def several():
        yield ("a:x", {"n": 1})
        yield ("a:y", None, "s-1")

    assert list(outputs_of(None)) == [] and list(outputs_of([])) == [] and list(outputs_of(iter(()))) == []
    assert list(outputs_of(("a:x", {"n": 1}))) == [("a:x", {"n": 1})]
    assert list(outputs_of([("a:x", {}), ("a:y", {}, None)])) == [("a:x", {}), ("a:y", {}, None)]
    assert list(outputs_of(several())) == [("a:x", {"n": 1}), ("a:y", None, "s-1")]
    for bad in (5, "a:x", [("a:x",)], [("a:x", {}, None, 1)], [{"type": "a:x"}], (1, {})):
        with pytest.raises(sdk.InvalidEvent, match="transform"):
            list(outputs_of(bad))


def test_a_transform_on_an_edge_resumes_from_its_own_events(xprocess, cluster, stream, homes) -> None:
    """On the NATS backbone the edge answers the log's requests from the stream: a restarted
    transform finds its own newest event there (``tail`` by ``source``), not the newest of another
    transform, and the derived stream is complete and once each."""
    from tests.helpers import start_part

    home = homes()
    part = start_part(xprocess, home, "edge", "--backbone", cluster.servers, "--stream", stream, "--replicas", "1")
    n = 20

    def fn(event: sdk.Event):
        return [("derived:a", {"i": event.payload["i"]}), ("derived:b", {"i": event.payload["i"]})]

    try:
        with sdk.connect(home, name="src", timeout=5.0) as bus:
            for i in range(n):
                bus.publish("load:x", {"i": i})
            with sdk.connect(home, name="t-edge", timeout=5.0) as tbus:
                Transform(tbus, ["load:*"], fn, status_interval=0).run(until=lambda t: t.consumed == 10)
            with sdk.connect(home, name="t-other", timeout=5.0) as other:  # another transform's event, newest
                other.publish("derived:a", {"i": 0, REF: [1, 0]})
                other.flush()
            with sdk.connect(home, name="t-edge", timeout=5.0) as tbus:
                again = Transform(tbus, ["load:*"], fn, status_interval=0)
                again.run(until=lambda t: t.consumed == n - 9)
            assert (again.resumes, again.skipped, again.published) == (1, 2, 2 * (n - 10))
            source = list(bus.replay("load:*"))
            got = wait_for(lambda: [e for e in bus.replay("derived:*") if e.source == "t-edge"], lambda d: len(d) >= 2 * n,
                           what="every derived event", timeout=30, interval=0.05)
            assert [(e.type, e.payload["i"], *e.payload[REF]) for e in got] == [
                (t, e.payload["i"], e.version, k) for e in source for k, t in enumerate(("derived:a", "derived:b"))
            ]
    finally:
        part.stop()
