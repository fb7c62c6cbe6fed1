"""The bench's scenarios, by name: each module's ``cases(env)`` lists what it measures."""

from __future__ import annotations

from types import ModuleType

from bench.scenarios import confirmed, eventlog, filters, isolation, latency, sessions, throughput

SCENARIOS: dict[str, tuple[ModuleType, str]] = {
    "throughput": (throughput, "1→1 at 64 B / 1 KiB / 16 KiB"),
    "fanout": (throughput, "1→4 subscribers at 64 B / 1 KiB / 16 KiB"),
    "fanin": (throughput, "4→1 publishers at 64 B / 1 KiB / 16 KiB"),
    "latency": (latency, "round trip at 1k/s and at 50% of capacity"),
    "isolation": (isolation, "fast subscribers with and without a stalled one"),
    "sessions": (sessions, "get/list/create per second, 1 and 4 clients"),
    "eventlog": (eventlog, "bus throughput with the event log off vs on; replay"),
    "filter": (filters, "one session of 100: broker-side session stream vs filtering in the client"),
    "transform": (filters, "a transform's events in/out per second and lag"),
    "confirmed": (confirmed, "publish(wait=True) and a burst then flush, vs NATS JetStream with acks"),
}
