"""The Prometheus endpoint of ``pryxbus up --metrics HOST:PORT``: the figures ``pryxbus top`` shows.

Each scrape asks every part for its ``stats`` (:class:`sdk.monitor.Sampler`), so the values
are exact at scrape time; rates are left to Prometheus (``rate(pryxbus_events_total[1m])``).
``prometheus-client`` is an optional extra (``pip install pryxbus[metrics]``), imported only here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sdk.monitor import PARTS, Sampler, figures
from schemas.endpoints import Endpoints
from sdk.security import ClientKeys


class MetricsUnavailable(RuntimeError):
    """``prometheus-client`` is not installed."""


def parse_address(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); raises ValueError with a readable message."""
    host, sep, port = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {spec!r}")
    return host, int(port)


def _import() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        raise MetricsUnavailable(
            "--metrics needs prometheus-client: pip install 'pryxbus[metrics]'"
        ) from e
    return prometheus_client


class StackCollector:
    """A prometheus-client collector: one sample of the stack per scrape."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        f = figures(self.sampler.sample())
        up = GaugeMetricFamily("pryxbus_up", "1 if the part answered its stats request", labels=["part"])
        latency = GaugeMetricFamily(
            "pryxbus_stats_latency_seconds", "round trip of the part's stats request", labels=["part"]
        )
        for part in PARTS:
            up.add_metric([part], 1.0 if f["up"][part] else 0.0)
            if part in f["latency"]:
                latency.add_metric([part], f["latency"][part])
        yield up
        yield latency

        b = f.get("broker")
        if b is not None:
            yield GaugeMetricFamily("pryxbus_version", "the broker's last stamped version", value=b["version"])
            yield CounterMetricFamily("pryxbus_events", "events stamped by this broker", value=b["events"])
            topics = CounterMetricFamily(
                "pryxbus_topic_events", "events stamped per topic (the busiest 1000)", labels=["topic"]
            )
            for topic, n in sorted(b["topics"].items()):
                topics.add_metric([topic], n)
            yield topics
            yield GaugeMetricFamily(
                "pryxbus_topics", "event types the broker keeps a sequence for", value=b["topic_count"]
            )
            yield CounterMetricFamily(
                "pryxbus_topics_refused", "events of new types refused (--max-topics)", value=b["topics_refused"]
            )
            yield GaugeMetricFamily("pryxbus_publishers", "publisher connections", value=b["publishers"])
            yield GaugeMetricFamily("pryxbus_subscribers", "subscriber connections", value=b["subscribers"])
            yield CounterMetricFamily("pryxbus_malformed", "messages with a wrong frame count", value=b["malformed"])
            yield CounterMetricFamily(
                "pryxbus_rejected", "messages with an invalid topic or body", value=b["rejected"]
            )
            yield GaugeMetricFamily("pryxbus_broker_uptime_seconds", "broker uptime", value=b["uptime"])

        lg = f.get("log")
        if lg is not None:
            yield GaugeMetricFamily("pryxbus_eventlog_events", "events kept in the log", value=lg["events"])
            yield GaugeMetricFamily("pryxbus_eventlog_last_version", "newest logged version", value=lg["last"])
            if lg["lag"] is not None:
                yield GaugeMetricFamily(
                    "pryxbus_eventlog_lag", "broker version minus last logged version", value=lg["lag"]
                )
            yield CounterMetricFamily("pryxbus_eventlog_lost", "events the log never received", value=lg["lost"])
            yield CounterMetricFamily("pryxbus_eventlog_gaps", "version gaps the log recorded", value=lg["gaps"])

        s = f.get("sessions")
        if s is not None:
            yield GaugeMetricFamily("pryxbus_sessions", "sessions stored", value=s["sessions"])
            requests = CounterMetricFamily(
                "pryxbus_session_requests", "session service requests per op", labels=["op"]
            )
            for op, n in sorted(s["requests"].items()):
                requests.add_metric([op], n)
            yield requests
            errors = CounterMetricFamily(
                "pryxbus_session_errors", "session service error replies per code", labels=["code"]
            )
            for code, n in sorted(s["errors"].items()):
                errors.add_metric([code], n)
            yield errors
            if s.get("service_ms") is not None:
                yield GaugeMetricFamily(
                    "pryxbus_session_service_seconds",
                    "mean time the session service spends answering a request",
                    value=s["service_ms"] / 1000,
                )

        transforms = f.get("transforms", {})
        if transforms:
            lag = GaugeMetricFamily(
                "pryxbus_transform_lag_seconds", "age of a transform's last source event when its outputs went",
                labels=["name"],
            )
            behind = GaugeMetricFamily(
                "pryxbus_transform_behind", "versions stamped since the transform's last source event (an upper bound)",
                labels=["name"],
            )
            consumed = CounterMetricFamily("pryxbus_transform_consumed", "source events consumed", labels=["name"])
            published = CounterMetricFamily("pryxbus_transform_published", "derived events published", labels=["name"])
            for name, t in sorted(transforms.items()):
                if t["lag_seconds"] is not None:
                    lag.add_metric([name], t["lag_seconds"])
                if t["behind"] is not None:
                    behind.add_metric([name], t["behind"])
                consumed.add_metric([name], t["consumed"])
                published.add_metric([name], t["published"])
            yield from (lag, behind, consumed, published)

        refused = CounterMetricFamily(
            "pryxbus_curve_refused", "connections a --curve part refused (a key not allowed, or no CURVE)", labels=["part"]
        )
        for part in ("broker", "log", "sessions"):
            if f.get(part) is not None:
                refused.add_metric([part], f[part].get("curve_refused", 0))
        yield refused


def serve(
    address: str, endpoints: Endpoints, *, timeout: float = 0.5, curve: ClientKeys | None = None
) -> tuple[str, Callable[[], None]]:
    """Serve ``/metrics`` on ``HOST:PORT`` in a background thread; returns the ``HOST:PORT`` it
    listens on (PORT 0: the port the system chose) and a function that stops it.

    ``curve``: CURVE client keys for a ``--curve`` stack.

    Raises:
        MetricsUnavailable: prometheus-client is not installed.
        ValueError: ``address`` is not ``HOST:PORT``.
        OSError: the address cannot be bound.
    """
    prometheus_client = _import()
    host, port = parse_address(address)
    sampler = Sampler(endpoints, timeout=timeout, curve=curve)
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(StackCollector(sampler))
    try:
        server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    except BaseException:
        sampler.close()
        raise

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
        sampler.close()

    bound_port = server.server_address[1]
    return (f"[{host}]" if ":" in host else host) + f":{bound_port}", stop
