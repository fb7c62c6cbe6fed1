"""What every pub/sub scenario shares: the run environment, sizes, and the side-process bodies.

A publisher side sets up, probes until every subscriber is live, then on ``go`` runs its loop; a
subscriber side reports ``ready`` (set up), ``live`` (probes from every publisher seen), then its
result. Every received event is counted against what was sent: a short count fails the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import Loss, open_client
from bench.results import RunResult
from bench.schedule import Schedule
from bench.sides import Side, SideError, stop_all, wait_exit

PUBSUB = ("pryxbus", "zmq", "zmq.proxy", "redis", "nats")
"""Systems that publish and subscribe, in report order."""

READY_TIMEOUT = 30.0
IDLE = 3.0
"""Seconds without any message after which a subscriber stops and counts what it lost."""
IDLE_BATCHED = 10.0
"""The same for batched runs: with the event log on, a burst of batches fills the broker's unlogged
budget (500,000 events) within a second and the bus waits for the log's next write, which took up
to 3.1 s on a loaded machine (1.5M batched events, none lost)."""


@dataclass
class Env:
    """Everything a case needs to run: sizes for this mode, where each system is, scratch space."""

    quick: bool
    workdir: Path
    wirings: dict[str, dict[str, Any]] = field(default_factory=dict)
    transport: str = "ipc"
    shared: dict[str, Any] = field(default_factory=dict)
    """Figures one case leaves for a later one (e.g. measured capacity)."""

    def scale(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def wiring(self, system: str) -> dict[str, Any]:
        return self.wirings[system]


def _roles(wiring: dict[str, Any], publish: tuple[str, ...], subscribe: tuple[str, ...], bind: bool) -> dict[str, Any]:
    direct = "channels" in wiring
    channels = publish + subscribe
    return {
        "publish": publish,
        "subscribe": subscribe,
        "bind": channels if (direct and bind) else (),
    }


def subscriber_side(
    conn: Any,
    wiring: dict[str, Any],
    bind: bool,
    publishers: int,
    expected: int,
    mode: str,
    hwm: int | None = None,
    size: int = 0,
) -> None:
    """Count (``mode="count"``, ``"batched"``), time (``"record"``) or ignore (``"stall"``) the data channel."""
    roles = _roles(wiring, (), ("data", "warm"), bind)
    if hwm is not None:
        roles["hwm"] = hwm
    client = open_client(wiring, **roles)
    try:
        conn.send(("ready", None))
        client.wait_probes(publishers, READY_TIMEOUT)
        conn.send(("live", None))
        if mode == "stall":
            wait_exit(conn, 600)  # never read: this subscriber is the stalled one
            return
        lost = None
        hist = None
        try:
            if mode == "record":
                got, end, h = client.record(expected, IDLE)
                hist = h.to_dict()
            elif mode == "batched":
                got, end = client.count_batched(expected, IDLE_BATCHED, size)
            else:
                got, end = client.count(expected, IDLE)
        except Loss as e:
            got, end, lost = e.received, time.monotonic_ns(), e.lost
        conn.send(("result", {"got": got, "end": end, "lost": lost, "hist": hist}))
        wait_exit(conn)
    finally:
        client.close()


def publisher_side(
    conn: Any,
    wiring: dict[str, Any],
    bind: bool,
    index: int,
    payload_size: int,
    count: int,
    rate: float,
    batched: bool = False,
) -> None:
    """Probe until ``go``, then send ``count`` events: as fast as possible (rate 0) or on a schedule."""
    client = open_client(wiring, **_roles(wiring, ("data", "warm"), (), bind))
    try:
        conn.send(("ready", None))
        client.probe(index, conn)
        conn.recv()  # the "go" that ended the probing
        t0 = time.monotonic_ns()
        late = 0
        if rate:
            late = client.paced(Schedule(rate, count), payload_size)
        elif batched:
            client.blast_batched(b"x" * payload_size, count)
        else:
            client.blast(b"x" * payload_size, count)
        t1 = time.monotonic_ns()
        conn.send(("result", {"t0": t0, "t1": t1, "late": late}))
        wait_exit(conn)
    finally:
        client.close()


@dataclass
class PubSubOutcome:
    pubs: list[dict[str, Any]]
    subs: list[dict[str, Any]]
    expected: int

    @property
    def t0(self) -> int:
        return min(p["t0"] for p in self.pubs)

    def loss(self) -> str | None:
        """Why the run failed, if any subscriber got fewer events than were sent."""
        for i, s in enumerate(self.subs):
            if s["got"] != self.expected or s["lost"]:
                extra = f" (system reported {s['lost']} lost)" if s["lost"] else ""
                return f"subscriber {i} received {s['got']} of {self.expected} events{extra}"
        return None


def run_pubsub(
    wiring: dict[str, Any],
    *,
    publishers: int,
    subscribers: int,
    per_publisher: int,
    payload_size: int,
    rate: float = 0.0,
    mode: str = "count",
    stalled: int = 0,
    stalled_hwm: int = 1000,
    batched: bool = False,
) -> PubSubOutcome | RunResult:
    """One run of ``publishers`` → ``subscribers`` (+ ``stalled`` that never read).

    Returns the outcome, or a failed RunResult if a side broke.
    """
    direct = "channels" in wiring
    sub_binds = direct and publishers > 1  # fan-in without a broker: the one subscriber binds
    expected = publishers * per_publisher
    sides: list[Side] = []
    try:
        subs = [
            Side(f"subscriber-{i}", subscriber_side, wiring, sub_binds, publishers, expected,
                 "batched" if batched else mode, None, payload_size)
            for i in range(subscribers)
        ]
        stalls = [
            Side(f"stalled-{i}", subscriber_side, wiring, sub_binds, publishers, expected, "stall", stalled_hwm)
            for i in range(stalled)
        ]
        sides += subs + stalls
        for s in subs + stalls:
            s.expect("ready", READY_TIMEOUT)
        pubs = [
            Side(f"publisher-{i}", publisher_side, wiring, direct and not sub_binds, i, payload_size, per_publisher, rate,
                 batched)
            for i in range(publishers)
        ]
        sides += pubs
        for p in pubs:
            p.expect("ready", READY_TIMEOUT)
        for s in subs + stalls:
            s.expect("live", READY_TIMEOUT)
        for p in pubs:
            p.send("go")
        budget = 120.0 + (per_publisher / rate if rate else 0.0)
        pub_results = [p.expect("result", budget) for p in pubs]
        sub_results = [s.expect("result", budget) for s in subs]
        return PubSubOutcome(pub_results, sub_results, expected)
    except SideError as e:
        return RunResult.failed(str(e))
    finally:
        stop_all(sides)


def rate(events: int, start_ns: int, end_ns: int) -> float:
    return events / max(1e-9, (end_ns - start_ns) / 1e9)
