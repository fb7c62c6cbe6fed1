"""Slow-subscriber isolation: two fast subscribers' rate and p99, without and with a stalled third.

The publisher sends 1 KiB events on an open-loop schedule; each fast subscriber records one-way
latency from each event's due time (one monotonic clock for all processes). The stalled subscriber
subscribes, proves it is live, then never reads again (a small queue limit, so its path fills).
The fast subscribers must still receive every event; their figures should not move.
"""

from __future__ import annotations

from bench.histogram import Histogram
from bench.results import Case, Metric, RunResult
from bench.scenarios.common import PUBSUB, Env, rate, run_pubsub

SIZE = 1024
RATE = 20_000.0

METRICS = (
    Metric("fast_rate", "fast subscribers", "events/s"),
    Metric("fast_p99", "fast subscribers p99", "µs", "lower"),
)


def _variant(stalled: int):
    def run(system: str, env: Env) -> RunResult:
        n = int(RATE * (0.2 if env.quick else 3.0))
        out = run_pubsub(
            env.wiring(system),
            publishers=1,
            subscribers=2,
            per_publisher=n,
            payload_size=SIZE,
            rate=RATE,
            mode="record",
            stalled=stalled,
        )
        if isinstance(out, RunResult):
            return out
        loss = out.loss()
        if loss:
            return RunResult.failed(loss)
        hist = Histogram()
        for s in out.subs:
            hist.merge(Histogram.from_dict(s["hist"]))
        return RunResult(
            values={
                "fast_rate": min(rate(n, out.t0, s["end"]) for s in out.subs),
                "fast_p99": hist.percentile(99) / 1000,
            },
            histograms={f"fast subscribers, {stalled} stalled": hist.to_dict()},
            details={"publisher_late": out.pubs[0]["late"]},
        )

    return run


def cases(env: Env) -> list[Case]:
    note = f"{RATE:,.0f} events/s of {SIZE} B, open loop"
    return [
        Case("isolation", "2 fast, none stalled", METRICS, PUBSUB, _variant(0), note=note),
        Case("isolation", "2 fast + 1 stalled", METRICS, PUBSUB, _variant(1), note=note),
    ]
