"""Round-trip latency: ping → echo → pong, open loop, at a fixed low rate and at 50 % of capacity.

One run of the case, in one pinger process and one echo process: a handshake (a pong came back, so
both paths are live); a fixed low rate; a burst that measures the round-trip capacity (pings sent
as fast as possible, round trips completed per second); then 50 % of that capacity. Every ping
carries its due time and latency counts from it (see bench.schedule), so a stall is charged to
every ping that should have been sent during it.
"""

from __future__ import annotations

import time
from typing import Any

from bench.clients import open_client
from bench.histogram import Histogram
from bench.results import Case, Metric, RunResult
from bench.scenarios.common import IDLE, PUBSUB, READY_TIMEOUT, Env
from bench.schedule import Schedule
from bench.sides import Side, SideError, stop_all, wait_exit

SIZE = 64
LOW_RATE = 1000.0

METRICS = (
    Metric("low_p50", "p50 @1k/s", "µs", "lower"),
    Metric("low_p99", "p99 @1k/s", "µs", "lower"),
    Metric("low_p99_9", "p99.9 @1k/s", "µs", "lower"),
    Metric("capacity", "round-trip capacity", "round trips/s"),
    Metric("half_p50", "p50 @50% capacity", "µs", "lower"),
    Metric("half_p99", "p99 @50% capacity", "µs", "lower"),
    Metric("half_p99_9", "p99.9 @50% capacity", "µs", "lower"),
)


def _roles(wiring: dict[str, Any], publish: str, subscribe: str) -> dict[str, Any]:
    direct = "channels" in wiring
    return {"publish": (publish,), "subscribe": (subscribe,), "bind": (publish,) if direct else ()}


def echo_side(conn: Any, wiring: dict[str, Any]) -> None:
    client = open_client(wiring, **_roles(wiring, "pong", "ping"))
    try:
        conn.send(("ready", None))
        n = client.echo(60.0)
        conn.send(("result", {"echoed": n}))
        wait_exit(conn)
    finally:
        client.close()


def pinger_side(conn: Any, wiring: dict[str, Any], low_count: int, probe_count: int, half_seconds: float) -> None:
    client = open_client(wiring, **_roles(wiring, "ping", "pong"))
    try:
        client.handshake(READY_TIMEOUT)
        conn.send(("ready", None))
        out: dict[str, Any] = {}
        got, hist = client.ping(Schedule(LOW_RATE, low_count, lead=0.005), SIZE, IDLE)
        out["low"] = {"sent": low_count, "got": got, "hist": hist.to_dict()}
        start = time.monotonic_ns()
        got, _ = client.ping(Schedule(0, probe_count), SIZE, IDLE)
        capacity = got / max(1e-9, (time.monotonic_ns() - start) / 1e9)
        out["probe"] = {"sent": probe_count, "got": got, "capacity": capacity}
        half_rate = capacity / 2
        half_count = max(100, int(half_rate * half_seconds))
        got, hist = client.ping(Schedule(half_rate, half_count, lead=0.005), SIZE, IDLE)
        out["half"] = {"sent": half_count, "got": got, "rate": half_rate, "hist": hist.to_dict()}
        client.stop_echo()
        conn.send(("result", out))
        wait_exit(conn)
    finally:
        client.close()


def _run(system: str, env: Env) -> RunResult:
    wiring = env.wiring(system)
    sides: list[Side] = []
    try:
        echo = Side("echo", echo_side, wiring)
        sides.append(echo)
        echo.expect("ready", READY_TIMEOUT)
        pinger = Side(
            "pinger",
            pinger_side,
            wiring,
            env.scale(250, 5000),
            env.scale(1000, 20_000),
            env.scale(0.15, 2.0),
        )
        sides.append(pinger)
        pinger.expect("ready", READY_TIMEOUT)
        out = pinger.expect("result", 300)
    except SideError as e:
        return RunResult.failed(str(e))
    finally:
        stop_all(sides)
    for phase in ("low", "probe", "half"):
        if out[phase]["got"] != out[phase]["sent"]:
            return RunResult.failed(f"{phase} phase: {out[phase]['got']} of {out[phase]['sent']} pongs came back")
    low = Histogram.from_dict(out["low"]["hist"])
    half = Histogram.from_dict(out["half"]["hist"])
    values = {"capacity": out["probe"]["capacity"]}
    for name, h in (("low", low), ("half", half)):
        values[f"{name}_p50"] = h.percentile(50) / 1000
        values[f"{name}_p99"] = h.percentile(99) / 1000
        values[f"{name}_p99_9"] = h.percentile(99.9) / 1000
    return RunResult(
        values=values,
        histograms={"@1k/s": out["low"]["hist"], "@50% capacity": out["half"]["hist"]},
        details={"half_rate": out["half"]["rate"]},
    )


def cases(env: Env) -> list[Case]:
    return [Case("latency", "round trip, 64 B", METRICS, PUBSUB, _run, note="open loop; from each ping's due time")]
