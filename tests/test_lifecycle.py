"""Lifecycle: idempotent close, close ending iteration, clean broker shutdown, one broker per home, threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import sdk
from tests.helpers import REPO
from helpers import wait_for
from tests.fronts import Front


def test_closing_a_subscription_twice_is_safe(front_bus: sdk.Bus) -> None:
    sub = front_bus.subscribe("a")
    sub.close()
    sub.close()
    assert sub.closed
    with pytest.raises(sdk.BusClosed):
        sub.recv(timeout=0.1)
    front_bus.publish("a", None)  # the bus is unaffected
    wait_for(front_bus.stats, lambda s: s["events_in"] == 1, what="the event counted")


def test_closing_the_bus_twice_is_safe(home: Path, broker, front: Front) -> None:
    bus = front.connect(home)
    sub = bus.subscribe()
    bus.close()
    bus.close()
    assert bus.closed and sub.closed
    with pytest.raises(sdk.BusClosed):
        sub.recv(timeout=1)
    with pytest.raises(sdk.BusClosed):
        bus.publish("a", None)
    with pytest.raises(sdk.BusClosed):
        bus.subscribe("a")


def test_recv_timeout_is_a_timeout_error(front_bus: sdk.Bus) -> None:
    with front_bus.subscribe("nothing:here") as sub:
        with pytest.raises(TimeoutError) as info:
            sub.recv(timeout=0.1)
    assert isinstance(info.value, sdk.BusTimeout)


def test_connect_without_a_broker_is_unavailable(home: Path, front: Front) -> None:
    with pytest.raises(sdk.BusUnavailable, match="did not answer"):
        front.connect(home, timeout=0.3)


def test_closing_the_bus_ends_iteration_in_another_thread(home: Path, broker) -> None:
    bus = sdk.connect(home)
    sub = bus.subscribe()
    seen: list[int] = []
    outcome: list[object] = []
    first = threading.Event()

    def consume() -> None:
        try:
            for event in sub:
                seen.append(event.version)
                first.set()
            outcome.append("ended")
        except BaseException as e:  # reported below
            outcome.append(e)

    thread = threading.Thread(target=consume)
    thread.start()
    bus.publish("x", None)
    assert first.wait(5)
    bus.close()
    thread.join(5)
    assert not thread.is_alive()
    assert (outcome, seen) == (["ended"], [1])


def run_broker(home: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "broker", "broker", "--home", str(home)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "ready" in line, line + proc.stderr.read()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_broker_stops_cleanly_on_signals(home: Path, sig: int) -> None:
    proc = run_broker(home)
    try:
        with sdk.connect(home) as bus, bus.subscribe() as sub:  # with peers connected
            bus.publish("x", None)
            assert sub.recv(timeout=5).version == 1
            proc.send_signal(sig)
            assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(p.name for p in home.glob("*.sock")) == []
    assert "stopped at version 1" in proc.stdout.read()


def test_a_second_broker_in_the_same_home_refuses_to_start(home: Path, bus: sdk.Bus) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "broker", "broker", "--home", str(home)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert second.returncode != 0
    assert "already running" in second.stderr and str(home) in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    with bus.subscribe() as sub:  # the first broker still serves, its sockets intact
        bus.publish("still:here", None)
        assert sub.recv(timeout=5).type == "still:here"


def test_threads_publishing_on_one_bus(bus: sdk.Bus) -> None:
    threads, n = 4, 250
    with bus.subscribe() as sub:
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []

        def publish(k: int) -> None:
            try:
                barrier.wait(5)
                for i in range(n):
                    bus.publish(f"thread:{k}", {"k": k, "i": i})
            except BaseException as e:
                errors.append(e)

        workers = [threading.Thread(target=publish, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        got = [sub.recv(timeout=5) for _ in range(threads * n)]
        for w in workers:
            w.join(5)
    assert errors == []
    assert [e.version for e in got] == list(range(1, threads * n + 1))
    for k in range(threads):
        mine = [e for e in got if e.type == f"thread:{k}"]
        assert [e.payload["i"] for e in mine] == list(range(n))
        assert [e.seq for e in mine] == list(range(1, n + 1))
    wait_for(bus.stats, lambda s: s["events_in"] == threads * n, what="every event counted")
