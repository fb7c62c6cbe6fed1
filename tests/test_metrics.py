"""pryxbus up --metrics: the Prometheus endpoint exposes the figures of pryxbus top, exactly."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import sdk
from tests.helpers import REPO, Part, cli, pryxbus, wait_for

pytest.importorskip("prometheus_client", reason="prometheus-client (the 'metrics' extra) is not installed")


def metrics_address(up: Part) -> str:
    """The ``HOST:PORT`` of the metrics an ``up --metrics HOST:0`` serves, from its ready line."""
    found = re.search(r"^pryxbus up ready .* metrics=http://(\S+)/metrics$", up.log, re.MULTILINE)
    assert found, up.log
    return found.group(1)


def scrape(address: str) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}, comments left out."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5.0) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_events_peers_log_and_sessions_exactly(home: Path, start) -> None:
    address = metrics_address(start("up", "--metrics", "127.0.0.1:0"))
    with sdk.connect(home, name="metrics-test") as bus:
        for i in range(7):
            bus.publish("app:tick", {"i": i})
        bus.publish("app:tock", {})
        bus.sessions.create("s")  # one more event: session:created
        with pytest.raises(sdk.SessionNotFound):
            bus.sessions.get("nope")
        wait_for(bus.log_stats, lambda s: s["last"] == 9, what="the event log at version 9")
        m = scrape(address)
    assert {k: v for k, v in m.items() if k.startswith("pryxbus_up")} == {
        'pryxbus_up{part="broker"}': 1.0,
        'pryxbus_up{part="sessions"}': 1.0,
        'pryxbus_up{part="log"}': 1.0,
    }
    assert m["pryxbus_version"] == 9
    assert m["pryxbus_events_total"] == 9
    assert m['pryxbus_topic_events_total{topic="app:tick"}'] == 7
    assert m['pryxbus_topic_events_total{topic="app:tock"}'] == 1
    assert m['pryxbus_topic_events_total{topic="session:created"}'] == 1
    assert m["pryxbus_publishers"] == 2  # our bus and the session service
    assert m["pryxbus_subscribers"] == 1  # the event log
    assert m["pryxbus_malformed_total"] == 0 and m["pryxbus_rejected_total"] == 0
    assert m["pryxbus_eventlog_events"] == 9 and m["pryxbus_eventlog_last_version"] == 9
    assert m["pryxbus_eventlog_lag"] == 0
    assert m["pryxbus_eventlog_lost_total"] == 0 and m["pryxbus_eventlog_gaps_total"] == 0
    assert m["pryxbus_sessions"] == 1
    assert m['pryxbus_session_requests_total{op="create"}'] == 1
    assert m['pryxbus_session_requests_total{op="get"}'] == 1
    assert m['pryxbus_session_errors_total{code="not_found"}'] == 1
    assert {k for k in m if k.startswith("pryxbus_stats_latency_seconds")} == {
        'pryxbus_stats_latency_seconds{part="broker"}',
        'pryxbus_stats_latency_seconds{part="sessions"}',
        'pryxbus_stats_latency_seconds{part="log"}',
    }


def test_metrics_without_prometheus_client_is_a_clear_error(home: Path) -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"  # as if it were not installed
        "from broker.cli import main\n"
        f"sys.exit(main(['up', '--metrics', '127.0.0.1:0', '--home', {str(home)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "pryxbus: --metrics needs prometheus-client: pip install 'pryxbus[metrics]'"
    assert not (home / "up.lock").exists()  # refused before anything started


def test_bad_metrics_address_is_refused(home: Path, capsys) -> None:
    result = cli(capsys, "up", "--metrics", "nowhere", home=home)
    assert result.returncode == 2  # a usage error, as every bad option value
    assert result.stderr.strip().endswith("pryxbus up: error: argument --metrics: expected HOST:PORT or [IPv6]:PORT, got 'nowhere'")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_metrics_on_an_ipv6_address(home: Path, start) -> None:
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    address = metrics_address(start("up", "--metrics", "[::1]:0"))
    assert address.startswith("[::1]:")
    with sdk.connect(home, name="metrics-test") as bus:
        bus.publish("app:tick", {})
        wait_for(bus.stats, lambda s: s["version"] == 1, what="one event stamped")
    assert scrape(address)["pryxbus_version"] == 1


def test_metrics_of_a_curve_stack(home: Path, start) -> None:
    keys = pryxbus("keys", "generate", home=home)
    assert keys.returncode == 0, keys.stderr
    address = metrics_address(start("up", "--curve", "--metrics", "127.0.0.1:0"))
    m = scrape(address)  # the endpoint scrapes the parts as a CURVE client of the home's keys
    assert [m[f'pryxbus_up{{part="{part}"}}'] for part in ("broker", "sessions", "log")] == [1, 1, 1]
    assert m["pryxbus_events_total"] == 0
    assert m['pryxbus_curve_refused_total{part="broker"}'] == 0

    import zmq  # a client with a key not let in, once (issue 16: refusals are counted, not silent)
    import zmq.auth

    from schemas.endpoints import Endpoints
    from sdk.security import KeyPaths

    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger, sock.reconnect_ivl = 0, -1
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = zmq.auth.load_certificate(KeyPaths.for_home(home).server_public)[0]
        sock.connect(Endpoints.for_home(home).control)
        key = 'pryxbus_curve_refused_total{part="broker"}'
        m = wait_for(lambda: scrape(address), lambda m: m[key] == 1, what="the refusal in /metrics")
        assert m['pryxbus_curve_refused_total{part="sessions"}'] == m['pryxbus_curve_refused_total{part="log"}'] == 0
    finally:
        ctx.destroy(linger=0)


def test_metrics_with_tcp_port_0_scrape_the_ports_the_parts_chose(home: Path, start) -> None:
    """On ``--tcp HOST:0`` the metrics start once the parts named their ports, and scrape those."""
    address = metrics_address(start("up", "--tcp", "127.0.0.1:0", "--metrics", "127.0.0.1:0"))
    with sdk.connect(home, name="metrics-test") as bus:
        bus.publish("app:tick", {})
        wait_for(bus.stats, lambda s: s["version"] == 1, what="one event stamped")
    m = scrape(address)
    assert [m[f'pryxbus_up{{part="{part}"}}'] for part in ("broker", "sessions", "log")] == [1, 1, 1]
    assert m["pryxbus_version"] == 1
