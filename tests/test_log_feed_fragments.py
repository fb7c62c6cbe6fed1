"""The event log's queue at the broker and messages of a bounded size (schemas/fragments.py): the
broker keeps at most --log-hwm events for a log that does not ack (durable.py), which kept the log's
queue, counted in messages, from overflowing while each event was one message. A long event now
goes as many messages: the queue must still hold everything the broker keeps for the log."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import msgpack
import zmq

from helpers import control, raw_publisher, wait_for, wait_stats
from schemas.endpoints import Endpoints


def test_a_stalled_log_loses_no_long_event_under_a_smaller_log_hwm(start, home: Path) -> None:
    """Found with the log stopped (SIGSTOP) under `broker --await-log 10 --log-hwm 500` and 60 raw
    events of 1 MB (60 MB, within the 64 MiB log budget and the 500 events): each went as 16
    fragments of 65 KiB, 960 messages, so the log's queue dropped some; once the log ran again and
    the next event came, it recorded 30 of them lost for good and acked past them (the broker then
    confirms them). With --sub-bytes 0 (whole events) it had all 61."""
    start("broker", "--await-log", "10", "--log-hwm", "500")
    event_log = start("event-log")
    ep = Endpoints.for_home(home)
    ctx = zmq.Context()
    try:
        wait_stats(ctx, ep.control, lambda s: s["taking_events"], what="the log subscribed")
        pub = raw_publisher(ctx, ep.publish)

        def body(payload: bytes) -> bytes:
            return msgpack.packb([1, 1700000000.0, "raw", None, payload], use_bin_type=True)

        os.kill(event_log.pid, signal.SIGSTOP)
        try:
            for _ in range(60):
                pub.send_multipart([b"long:one", body(os.urandom(1_000_000))])
            # stamped, so sent towards the stopped log in the same turn: the broker answers stats after it
            wait_stats(ctx, ep.control, lambda s: s["version"] >= 60, what="every event stamped", timeout=30)
        finally:
            os.kill(event_log.pid, signal.SIGCONT)
        pub.send_multipart([b"long:after", body(b"next")])  # a gap, if any, shows at the next event
        stats = wait_for(lambda: control(ctx, ep.log, {"op": "stats"})["result"], lambda s: s["last"] >= 61,
                         what="the log at version 61", timeout=30)
        assert (stats["events"], stats["missing"], stats["lost"]) == (61, 0, 0)
        pub.close(linger=0)
    finally:
        ctx.destroy(linger=0)
