"""Throughput at 64 B / 1 KiB / 16 KiB: 1 → 1, fan-out 1 → 4 and fan-in 4 → 1.

Rates are events delivered per second, from the first publisher's first send to the subscriber's
last receive (so queued-but-undelivered events never count).
"""

from __future__ import annotations

from statistics import median
from bench.results import Case, Metric, RunResult
from bench.scenarios.common import PUBSUB, Env, PubSubOutcome, rate, run_pubsub

RATE = Metric("rate", "delivered", "events/s")
PER_SUB = Metric("per_sub", "per subscriber", "events/s")
TOTAL = Metric("total", "total delivered", "events/s")
PER_PUB = Metric("per_pub", "per publisher", "events/s")

SIZES = ((64, "64 B"), (1024, "1 KiB"), (16384, "16 KiB"))


def counts(env: Env, size: int) -> int:
    """Events per run: modest (2 cores), and at most ~80 MB of payload in flight. A quick run of
    64 B events still lasts ~0.2 s: shorter ones measure start-up more than the rate."""
    base = env.scale(100_000, 150_000)
    return min(base, (env.scale(48, 160) << 20) // max(size, 512))


BATCHED = ("pryxbus", "zmq")
"""Systems measured with events sent in batches: pryxbus's publish_many/recv_many, and plain pyzmq
with fixed-size events concatenated into 128 KiB frames (what Python moves over ZeroMQ at best)."""


def _one_to_one(size: int, batched: bool = False):
    def run(system: str, env: Env) -> RunResult:
        n = counts(env, size)
        if batched:  # ten times as many, within ~100 MB (quick) / 320 MB of payload
            n = min(10 * n, (env.scale(96, 320) << 20) // size)
        out = run_pubsub(env.wiring(system), publishers=1, subscribers=1, per_publisher=n, payload_size=size,
                         batched=batched)
        if isinstance(out, RunResult):
            return out
        return _finish(out, {"rate": rate(n, out.t0, out.subs[0]["end"])})

    return run


def _finish(out: PubSubOutcome, values: dict[str, float]) -> RunResult:
    loss = out.loss()
    if loss:
        return RunResult.failed(loss)
    return RunResult(values=values, details={"events": out.expected})


def fan_counts(env: Env, size: int, quick: int, full: int) -> int:
    """Events per publisher in a fan-out or fan-in run: at most ~16 MB (quick) / 64 MB of payload each."""
    return min(env.scale(quick, full), (env.scale(16, 64) << 20) // max(size, 512))


def _fan_out(size: int):
    def run(system: str, env: Env) -> RunResult:
        n = fan_counts(env, size, 8_000, 60_000)
        out = run_pubsub(env.wiring(system), publishers=1, subscribers=4, per_publisher=n, payload_size=size)
        if isinstance(out, RunResult):
            return out
        ends = [s["end"] for s in out.subs]
        return _finish(
            out,
            {
                "per_sub": median(rate(n, out.t0, e) for e in ends),
                "total": rate(4 * n, out.t0, max(ends)),
            },
        )

    return run


def _fan_in(size: int):
    def run(system: str, env: Env) -> RunResult:
        n = fan_counts(env, size, 4_000, 40_000)
        out = run_pubsub(env.wiring(system), publishers=4, subscribers=1, per_publisher=n, payload_size=size)
        if isinstance(out, RunResult):
            return out
        end = out.subs[0]["end"]
        return _finish(
            out,
            {
                "total": rate(4 * n, out.t0, end),
                "per_pub": median(rate(n, p["t0"], end) for p in out.pubs),
            },
        )

    return run


def cases(env: Env) -> list[Case]:
    out = [
        Case("throughput", f"1→1, {label}", (RATE,), PUBSUB, _one_to_one(size), full_only=size == 1024)
        for size, label in SIZES
    ]
    out += [
        Case("throughput", f"1→1, {label}, batched", (RATE,), BATCHED, _one_to_one(size, batched=True),
             full_only=size != 64)
        for size, label in SIZES
    ]
    out += [Case("fanout", f"1→4, {label}", (PER_SUB, TOTAL), PUBSUB, _fan_out(size), full_only=size == 1024)
            for size, label in SIZES]
    out += [Case("fanin", f"4→1, {label}", (TOTAL, PER_PUB), PUBSUB, _fan_in(size), full_only=size == 1024)
            for size, label in SIZES]
    return out

