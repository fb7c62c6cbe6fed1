"""The bench's result schema: medians and spread, failures, ratios, targets, the JSON document."""

from bench.report import evaluate_targets, fmt, table
from bench.results import Measurement, Metric, check_document, ratio

RATE = Metric("rate", "delivered", "events/s")
P50 = Metric("p50", "p50", "µs", "lower")


def m(system: str, values: list[float], errors: list[str] | None = None, metric: Metric = RATE,
      scenario: str = "throughput", case: str = "1→1, 64 B") -> Measurement:
    return Measurement(scenario, case, system, metric, values=values, errors=errors or [])


def test_median_and_spread() -> None:
    x = m("pryxbus", [90.0, 110.0, 100.0])
    assert (x.status, x.median, x.spread_pct) == ("ok", 100.0, 10.0)


def test_a_failed_run_fails_the_measurement_and_has_no_median() -> None:
    x = m("zmq", [100.0, 100.0], errors=["run 3: subscriber 0 received 9 of 10 events"])
    assert (x.status, x.median) == ("failed", None)
    assert "FAILED" in table([m("pryxbus", [1.0]), x], ["pryxbus", "zmq"])


def test_ratio_is_ours_over_theirs_from_medians() -> None:
    assert ratio(m("pryxbus", [300.0]), m("nats", [200.0])) == 1.5
    assert ratio(m("pryxbus", [300.0]), m("nats", [1.0], errors=["x"])) is None


def test_table_shows_ratio_per_peer() -> None:
    text = table([m("pryxbus", [150_000.0]), m("redis", [100_000.0])], ["pryxbus", "redis"])
    assert "| pryxbus (SDK, broker) | 150k |" in text
    assert "| Redis (redis-py+hiredis) | 100k (1.50×) |" in text


def test_targets_use_same_run_ratios_and_say_what_is_missing() -> None:
    ms = [m("pryxbus", [150.0]), m("nats", [100.0]), m("redis", [100.0])]
    by = {t["target"]: t for t in evaluate_targets(ms)}
    nats = by["1→1 throughput ≥ 1.3× NATS (64 B)"]
    redis = by["1→1 throughput ≥ 1.5× Redis pub/sub (64 B)"]
    assert (nats["value"], nats["met"]) == (1.5, True)
    assert (redis["value"], redis["met"]) == (1.5, True)
    zmq = by["1→1 throughput ≥ 1.0× pyzmq PUB→SUB without a broker (64 B)"]
    assert zmq["met"] is None and "zmq" in zmq["reason"]


def test_lower_is_better_targets() -> None:
    case = "round trip, 64 B"
    ms = [m("pryxbus", [120.0], metric=Metric("low_p50", "p50", "µs", "lower"), scenario="latency", case=case),
          m("zmq.proxy", [100.0], metric=Metric("low_p50", "p50", "µs", "lower"), scenario="latency", case=case)]
    t = next(t for t in evaluate_targets(ms) if t["issue"] == 2 and "p50" in t["target"])
    assert (t["value"], t["met"]) == (1.2, True)


def test_formatting() -> None:
    assert (fmt(1_234_567, "events/s"), fmt(45_300, "events/s"), fmt(2_500, "ops/s"), fmt(87.25, "µs")) == (
        "1.23M", "45k", "2.5k", "87.2")


def test_document_check() -> None:
    doc = {"schema": 1, "started": "", "finished": "", "duration_s": 1.0, "quick": True, "machine": {},
           "systems": {}, "targets": [], "measurements": [m("pryxbus", [1.0]).to_dict()]}
    assert check_document(doc) == []
    doc["measurements"].append({"status": "failed"})
    del doc["machine"]
    assert len(check_document(doc)) == 2
