"""Filters and transforms (issue 17).

``filter``: one subscriber wants one session's events out of 100 sessions. Broker-side it
subscribes with ``session_id=`` (the session's stream, PROTOCOL.md §5.1); in the client it receives
every event and drops the other sessions itself. Same publisher, same events: the figures are the
subscriber's CPU time per event it delivers and the publisher's rate.

``transform``: a :class:`sdk.transform.Transform` (and an ``AsyncTransform``, alternated with it)
mapping each event to one renamed event while a publisher sends as fast as it can: events in and
out per second, and the lag (how old a source event was when its output went).
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from bench.results import Case, Metric, RunResult
from bench.scenarios.common import READY_TIMEOUT, Env, rate
from bench.sides import Side, SideError, stop_all, wait_exit

SESSIONS = 100
TARGET = "s-7"
PAD = "x" * 24  # with the envelope, a body of about 64 bytes

CPU = Metric("cpu", "subscriber CPU per delivered event", "µs", better="lower")
PUB = Metric("pub", "publisher", "events/s")
IN = Metric("in", "consumed", "events/s")
OUT = Metric("out", "published", "events/s")
LAG = Metric("lag_p50", "lag p50", "ms", better="lower")
LAG_MAX = Metric("lag_max", "lag max", "ms", better="lower")


def filter_subscriber(conn: Any, home: str, mode: str, kind: str, expected: int) -> None:
    import sdk

    with sdk.connect(home, name="bench-filter", timeout=30.0) as bus:
        if mode == "broker":
            sub = bus.subscribe(f"{kind}:*", session_id=TARGET, policy="count")
        else:
            sub = bus.subscribe(f"{kind}:*", policy="count")
        conn.send(("ready", None))
        cpu0 = time.process_time()
        got = 0
        while got < expected:
            try:
                event = sub.recv(timeout=10.0)
            except sdk.BusTimeout:
                break
            if mode == "client" and event.session_id != TARGET:
                continue
            got += 1
        cpu = time.process_time() - cpu0
        conn.send(("result", {"got": got, "lost": sub.lost, "cpu": cpu, "received": sub.received}))
        wait_exit(conn)


def filter_publisher(conn: Any, home: str, kind: str, n: int) -> None:
    import sdk

    with sdk.connect(home, name="bench-filter-pub", timeout=30.0) as bus:
        sessions = [f"s-{i}" for i in range(SESSIONS)]
        publish = bus.publish
        event_type = f"{kind}:x"
        conn.send(("ready", None))
        conn.recv()
        t0 = time.monotonic_ns()
        for i in range(n):
            publish(event_type, {"i": i, "pad": PAD}, session_id=sessions[i % SESSIONS])
        t1 = time.monotonic_ns()
        conn.send(("result", {"t0": t0, "t1": t1}))
        wait_exit(conn)


def _filter(mode: str):
    def run(system: str, env: Env) -> RunResult:
        n = env.scale(50_000, 200_000)
        kind = "f" + uuid.uuid4().hex[:8]  # a fresh type per run: no earlier run's events
        home = env.wirings["pryxbus"]["home"]
        expected = n // SESSIONS
        sides: list[Side] = []
        try:
            sub = Side("filter-subscriber", filter_subscriber, home, mode, kind, expected)
            sides.append(sub)
            sub.expect("ready", READY_TIMEOUT)
            pub = Side("filter-publisher", filter_publisher, home, kind, n)
            sides.append(pub)
            pub.expect("ready", READY_TIMEOUT)
            pub.send("go")
            p = pub.expect("result", 300)
            s = sub.expect("result", 300)
        except SideError as e:
            return RunResult.failed(str(e))
        finally:
            stop_all(sides)
        if s["got"] != expected or s["lost"]:
            return RunResult.failed(f"the subscriber delivered {s['got']} of {expected} events ({s['lost']} lost)")
        return RunResult(
            values={"cpu": s["cpu"] / expected * 1e6, "pub": rate(n, p["t0"], p["t1"])},
            details={"events": n, "delivered": expected, "decoded": s["received"]},
        )

    return run


def transform_side(conn: Any, home: str, kind: str, n: int, front: str = "sync") -> None:
    """The transform (``front``: ``sync`` for Transform, ``asyncio`` for AsyncTransform), reported
    ready once it has consumed a warm-up event (so its start-up, the look for its progress in the
    log, is not measured), then timed from the first measured event."""
    import sdk

    lags: list[float] = []
    marks: list[int] = []

    def fn(event: Any) -> tuple[str, dict[str, Any]]:
        if event.payload["i"] >= 0:
            if not marks:
                marks.append(time.monotonic_ns())
            lags.append(time.time() - event.ts)
        return f"{kind}o:x", {"i": event.payload["i"]}

    def live(t: Any) -> bool:
        if t.consumed == 1:
            conn.send(("ready", None))
        return bool(t.consumed > n)

    def warm_up() -> None:
        with sdk.connect(home, name="bench-warm-up", timeout=30.0) as warm:
            warm.publish(f"{kind}:x", {"i": -1})

    if front == "asyncio":
        import asyncio

        import sdk.aio
        from sdk.transform import AsyncTransform

        async def run() -> Any:
            async with sdk.aio.connect(home, name=f"bench-{kind}", timeout=30.0) as bus:
                start = (await bus.control.call({"op": "ping"}))["version"]
                transform = AsyncTransform(bus, [f"{kind}:*"], fn, start=start)
                await asyncio.to_thread(warm_up)
                await transform.run(until=live)
                return transform

        transform: Any = asyncio.run(run())
    else:
        from sdk.transform import Transform

        with sdk.connect(home, name=f"bench-{kind}", timeout=30.0) as bus:
            start = bus.control.call({"op": "ping"})["version"]
            transform = Transform(bus, [f"{kind}:*"], fn, start=start)
            warm_up()
            transform.run(until=live)
    t1 = time.monotonic_ns()
    lags.sort()
    conn.send(("result", {
        "t0": marks[0], "t1": t1, "consumed": transform.consumed - 1, "published": transform.published - 1,
        "lag_p50": statistics.median(lags), "lag_max": lags[-1],
    }))
    wait_exit(conn)


def _transform(front: str) -> Any:
    def run(system: str, env: Env) -> RunResult:
        return _transform_run(front, env)

    return run


def _transform_run(front: str, env: Env) -> RunResult:
    n = env.scale(20_000, 100_000)
    kind = "t" + uuid.uuid4().hex[:8]
    home = env.wirings["pryxbus.log"]["home"]
    sides: list[Side] = []
    try:
        side = Side("transform", transform_side, home, kind, n, front)
        sides.append(side)
        side.expect("ready", READY_TIMEOUT)
        pub = Side("transform-publisher", filter_publisher, home, kind, n)
        sides.append(pub)
        pub.expect("ready", READY_TIMEOUT)
        pub.send("go")
        pub.expect("result", 300)
        out = side.expect("result", 300)
    except SideError as e:
        return RunResult.failed(str(e))
    finally:
        stop_all(sides)
    if out["consumed"] != n or out["published"] != n:
        return RunResult.failed(f"the transform consumed {out['consumed']} and published {out['published']} of {n}")
    return RunResult(
        values={
            "in": rate(n, out["t0"], out["t1"]),
            "out": rate(out["published"], out["t0"], out["t1"]),
            "lag_p50": out["lag_p50"] * 1e3,
            "lag_max": out["lag_max"] * 1e3,
        },
        details={"events": n},
    )


def cases(env: Env) -> list[Case]:
    return [
        Case("filter", f"1 session of {SESSIONS}, broker-side", (CPU, PUB), ("pryxbus",), _filter("broker")),
        Case("filter", f"1 session of {SESSIONS}, in the client", (CPU, PUB), ("pryxbus",), _filter("client")),
        Case("transform", "1→1 rename, 64 B", (IN, OUT, LAG, LAG_MAX), ("pryxbus",), _transform("sync")),
        Case("transform", "1→1 rename, 64 B, asyncio", (IN, OUT, LAG, LAG_MAX), ("pryxbus",), _transform("asyncio")),
    ]
