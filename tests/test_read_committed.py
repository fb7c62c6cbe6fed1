"""Read-committed ``policy="recover"`` (issue 15): a recover subscriber gets only what the event log
has, so an event a broker stamped and sent but the log never wrote, lost with that broker and
stamped again under a new version when its publisher sends it again, reaches it once.

The publisher is the raw identified publisher of tests/test_durable.py (PROTOCOL.md §4.1): it
numbers its events and sends again what the broker had not confirmed after a restart.
"""

from __future__ import annotations

import signal
from pathlib import Path

import zmq

from schemas.endpoints import Endpoints
from tests.fronts import Front
from tests.helpers import logged_numbers, stats, wait_for, wait_stats
from tests.test_durable import PID, RawPublisher
from tests.test_faults import Collector

PAD = "x" * 1000
"""Events of ~1 KB: what the stopped log's socket buffers hold is far less than what is sent."""


def in_log(home: Path) -> list[tuple[int, int]]:
    """(version, pub_num) of every event of the raw publisher in the log, by version."""
    return logged_numbers(home, PID)


def test_an_event_the_log_never_wrote_reaches_recover_once_across_a_broker_kill(home: Path, start, front: Front) -> None:
    """The event log is stopped, 2,000 events are stamped and delivered live, the broker is killed
    (what the log had not read of them dies with it), the log resumes, a new broker starts, and the
    publisher sends again what was not confirmed: the new broker stamps anew those the log lacks.
    A ``count`` subscriber sees those twice, under two versions; the ``recover`` subscriber sees
    every number once, in version order, exactly the versions the log holds."""
    broker = start("broker", "--await-log", "30")
    log = start("event-log")
    ep = Endpoints.for_home(home)
    with zmq.Context() as ctx, front.connect(home, name="t", timeout=10) as bus:
        wait_stats(ctx, ep.control, lambda s: s["taking_events"], what="the log subscribed")
        counting = Collector(bus, "durable:*", policy="count")
        recovering = Collector(bus, "durable:*", policy="recover")
        try:
            pub = RawPublisher(ctx, ep.publish, PID)
            for n in range(1, 201):
                pub.send(n, {"i": n, "pad": PAD})
            pub.until(lambda: pub.through == 200)
            wait_for(lambda: len(recovering.versions), lambda got: got == 200, what="200 logged events delivered")

            log.signal(signal.SIGSTOP)
            try:
                for n in range(201, 2201):
                    pub.send(n, {"i": n, "pad": PAD})
                wait_for(lambda: len(counting.versions), lambda got: got == 2200, what="2,200 delivered live")
                # stamped and delivered, none written: the recover subscriber holds them back
                assert stats(ctx, ep.control)["durable"]["log_durable"] <= max(counting.versions[:200])
                assert len(recovering.versions) == 200
                broker.kill()
            finally:
                log.signal(signal.SIGCONT)
            seen = len(pub.subscriptions)
            start("broker", "--await-log", "30")
            pub.until(lambda: pub.subscriptions[seen:] == [b"\x01"], timeout=30, what="the new broker")
            wait_stats(ctx, ep.control, lambda s: s["subscribers"] >= 2, what="both subscriptions on the new broker")
            for n in range(pub.through + 1, 2401):  # again, in order, what was not confirmed
                pub.send(n, {"i": n, "pad": PAD})
            pub.until(lambda: pub.through == 2400, timeout=30)
            wait_for(lambda: len(recovering.versions), lambda got: got >= 2400, timeout=30,
                     what="every number at the recover subscriber")
            wait_for(lambda: counting.count("raw"), lambda got: got >= 2400, timeout=30,
                     what="every number at the count subscriber")
        finally:
            counting.close()
            recovering.close()
    logged = in_log(home)
    assert [n for _v, n in sorted(logged, key=lambda row: row[1])] == list(range(1, 2401))
    assert recovering.versions == [v for v, _n in logged]  # exactly the log, in version order
    assert recovering.streams["raw"] == [n for _v, n in logged]
    restamped = sorted(set(n for n in counting.streams["raw"] if counting.streams["raw"].count(n) > 1))
    assert restamped, "the scenario must stamp some events twice (the count subscriber sees them twice)"
    print(f"\nstamped again by the new broker: {len(restamped)} events ({restamped[0]}..{restamped[-1]});"
          f" the count subscriber got {len(counting.versions)}, the recover subscriber {len(recovering.versions)}")
