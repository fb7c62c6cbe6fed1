"""Confirmed publishing: ``publish(wait=True)`` one at a time, and a burst then ``flush()``, against
NATS JetStream's ``publish`` with acks (issue 15).

pryxbus runs with its event log beside the broker (as under ``pryxbus up``), so *confirmed* means
on disk in the log (SQLite WAL, synchronous NORMAL); JetStream uses a file stream, so its ack
means stored (its default fsync is periodic too). Each JetStream message carries a ``Nats-Msg-Id``
header, which gives it the de-duplication pryxbus's numbered events have. One publisher, 64 B.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.histogram import Histogram
from bench.results import Case, Metric, RunResult
from bench.scenarios.common import Env, rate
from bench.sides import Side, SideError

SIZE = 64
SUBJECT = "bench.confirmed"
TOPIC = "bench:confirmed"

WAIT_METRICS = (
    Metric("rate", "confirmed", "events/s"),
    Metric("p50", "confirm p50", "µs", "lower"),
    Metric("p99", "confirm p99", "µs", "lower"),
)
BURST_METRICS = (
    Metric("rate", "confirmed", "events/s"),
    Metric("flush", "flush after the last publish", "ms", "lower"),
)


def pryxbus_side(conn: Any, home: str, mode: str, count: int) -> None:
    import sdk

    payload = b"x" * SIZE
    with sdk.connect(home, name="bench-confirmed", timeout=30.0, publish_timeout=120.0) as bus:
        bus.publish(TOPIC, payload, wait=True)  # the publisher is open, the log is writing
        hist = Histogram()
        t0 = time.monotonic_ns()
        if mode == "wait":
            for _ in range(count):
                start = time.monotonic_ns()
                bus.publish(TOPIC, payload, wait=True)
                hist.record(time.monotonic_ns() - start)
            sent = t1 = time.monotonic_ns()
        else:
            for _ in range(count):
                bus.publish(TOPIC, payload)
            sent = time.monotonic_ns()
            bus.flush(timeout=120.0)
            t1 = time.monotonic_ns()
        confirmed = bus.publish_stats.confirmed - 1
    conn.send(("result", {"confirmed": confirmed, "t0": t0, "sent": sent, "t1": t1, "hist": hist.to_dict()}))


def nats_side(conn: Any, port: int, mode: str, count: int) -> None:
    import asyncio

    import nats

    async def run() -> dict[str, Any]:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, connect_timeout=10)
        try:
            js = nc.jetstream(timeout=60.0)
            await js.add_stream(name="BENCH", subjects=["bench.>"], storage="file")
            payload = b"x" * SIZE
            run_id = uuid.uuid4().hex
            await js.publish(SUBJECT, payload, headers={"Nats-Msg-Id": f"{run_id}-warm"})
            hist = Histogram()
            acks = 0
            t0 = time.monotonic_ns()
            if mode == "wait":
                for i in range(count):
                    start = time.monotonic_ns()
                    await js.publish(SUBJECT, payload, headers={"Nats-Msg-Id": f"{run_id}-{i}"})
                    hist.record(time.monotonic_ns() - start)
                    acks += 1
                sent = t1 = time.monotonic_ns()
            else:
                futures = [
                    await js.publish_async(SUBJECT, payload, headers={"Nats-Msg-Id": f"{run_id}-{i}"})
                    for i in range(count)
                ]
                sent = time.monotonic_ns()
                await js.publish_async_completed()
                t1 = time.monotonic_ns()
                acks = sum(1 for f in futures if f.done() and f.exception() is None)
            return {"confirmed": acks, "t0": t0, "sent": sent, "t1": t1, "hist": hist.to_dict()}
        finally:
            await nc.close()

    conn.send(("result", asyncio.run(run())))


def _case(mode: str):
    def run(system: str, env: Env) -> RunResult:
        count = env.scale(2000, 10_000) if mode == "wait" else env.scale(50_000, 200_000)
        wiring = env.wiring("pryxbus.log" if system == "pryxbus" else "nats.js")
        if system == "pryxbus":
            side = Side("confirmed", pryxbus_side, wiring["home"], mode, count)
        else:
            side = Side("confirmed", nats_side, wiring["port"], mode, count)
        try:
            out = side.expect("result", 300)
        except SideError as e:
            return RunResult.failed(str(e))
        finally:
            side.stop()
        if out["confirmed"] != count:
            return RunResult.failed(f"{out['confirmed']} of {count} events confirmed")
        values = {"rate": rate(count, out["t0"], out["t1"])}
        if mode == "wait":
            hist = Histogram.from_dict(out["hist"])
            values["p50"] = hist.percentile(50) / 1000
            values["p99"] = hist.percentile(99) / 1000
            return RunResult(values=values, histograms={"confirm": out["hist"]}, details={"events": count})
        values["flush"] = (out["t1"] - out["sent"]) / 1e6
        return RunResult(values=values, details={"events": count})

    return run


def cases(env: Env) -> list[Case]:
    systems = ("pryxbus", "nats")
    return [
        Case("confirmed", "publish(wait=True), 64 B", WAIT_METRICS, systems, _case("wait"),
             note="one at a time; pryxbus: on disk in its event log; NATS: JetStream file stream, Nats-Msg-Id"),
        Case("confirmed", "burst then flush, 64 B", BURST_METRICS, systems, _case("burst"),
             note="NATS: publish_async then publish_async_completed"),
    ]
