"""Sampling a running stack's counters for ``pryxbus top`` and the Prometheus endpoint.

One :class:`Sampler` asks each part (broker control, session service, event log) for its
``stats`` with a short timeout and no retries; a part that does not answer is *down* (``None``),
never an exception. :func:`figures` turns two successive samples into the numbers both views show
(rates need two samples; everything else is read from the newest one).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from schemas.endpoints import Endpoints
from schemas.envelope import MalformedEvent, decode_row
from sdk.transport import configure_context
from sdk.errors import BusError
from sdk.request import Requester
from sdk.security import ClientKeys, secure_client_context

PARTS = ("broker", "sessions", "log")
STATUS_TYPE = "transform:status"  # sdk.transform.STATUS_TYPE (not imported: top stays light)
TRANSFORMS_SEEN = 200

# Counters of the session service that are its own bookkeeping or monitoring (the sampler's own
# ``stats`` calls), not client requests.
_INTERNAL_COUNTS = frozenset({"commits", "batches", "replayed", "unsendable", "stats", "ping"})


@dataclass(frozen=True)
class Sample:
    """Each part's ``stats`` reply at one moment (None: down), and how long each reply took."""

    at: float
    broker: dict[str, Any] | None = None
    sessions: dict[str, Any] | None = None
    log: dict[str, Any] | None = None
    latency: dict[str, float] = field(default_factory=dict)
    """Seconds the ``stats`` round trip took, per part that answered."""
    errors: dict[str, str] = field(default_factory=dict)
    """Why a part is down, per part that did not answer."""
    transforms: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The newest status of each transform (its ``transform:status`` events in the log), by name."""


class Sampler:
    """Asks a stack's parts for their counters. A context manager; thread-safe."""

    def __init__(self, endpoints: Endpoints, *, timeout: float = 0.5, curve: ClientKeys | None = None) -> None:
        self.endpoints = endpoints
        # With curve (a --curve stack): every request socket is a CURVE client (sdk/security.py).
        self._ctx = secure_client_context(configure_context(zmq.Context(), endpoints), curve)
        where = {"broker": endpoints.control, "sessions": endpoints.sessions, "log": endpoints.log}
        self._clients = {
            part: Requester(self._ctx, endpoint, timeout=timeout, retries=0, what=part)
            for part, endpoint in where.items()
            if endpoint
        }

    def sample(self) -> Sample:
        replies: dict[str, Any] = {}
        latency: dict[str, float] = {}
        errors: dict[str, str] = {}
        for part in PARTS:
            client = self._clients.get(part)
            if client is None:
                errors[part] = "no endpoint"
                continue
            missing = _missing_socket(client.endpoint)
            if missing:
                errors[part] = missing  # no socket file: do not wait out a timeout
                continue
            began = time.perf_counter()
            try:
                replies[part] = client.call({"op": "stats"})
            except BusError as e:
                errors[part] = str(e)
                continue
            latency[part] = time.perf_counter() - began
        transforms = self._transforms() if "log" in replies else {}
        return Sample(at=time.monotonic(), latency=latency, errors=errors, transforms=transforms, **replies)

    def _transforms(self) -> dict[str, dict[str, Any]]:
        """The newest status of each transform that published one among the log's last TRANSFORMS_SEEN."""
        try:
            rows = self._clients["log"].call({"op": "tail", "patterns": [STATUS_TYPE], "limit": TRANSFORMS_SEEN})["events"]
        except (BusError, KeyError, TypeError):
            return {}
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            try:
                payload = decode_row(row).payload
            except MalformedEvent:
                continue
            if isinstance(payload, dict) and isinstance(payload.get("name"), str):
                out[payload["name"]] = payload  # oldest first: the newest wins
        return out

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._ctx.term()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _missing_socket(endpoint: str) -> str:
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        try:
            os.stat(path)
        except OSError:
            return f"no socket {path}"
    return ""


def _rate(new: float, old: float | None, seconds: float) -> float | None:
    if old is None:
        return None
    return max(new - old, 0) / seconds if seconds > 0 else 0.0


def figures(current: Sample, previous: Sample | None = None) -> dict[str, Any]:
    """The numbers ``top`` shows and ``/metrics`` exports. Rates are None without a usable previous
    sample (the first frame, or the broker restarted in between)."""
    out: dict[str, Any] = {"up": {part: getattr(current, part) is not None for part in PARTS}}
    out["latency"] = dict(current.latency)
    out["errors"] = dict(current.errors)

    b = current.broker
    if b is not None:
        out["broker"] = {
            "pid": b.get("pid"),
            "uptime": b.get("uptime", 0.0),
            "version": b.get("version", 0),
            "events": b.get("events_in", 0),
            "publishers": b.get("publishers", 0),
            "subscribers": b.get("subscribers", 0),
            "malformed": b.get("malformed", 0),
            "rejected": b.get("rejected", 0),
            "lifecycle_events": b.get("lifecycle_events", 0),
            "topics": dict(b.get("topics", {})),
            "topic_count": b.get("topic_count", len(b.get("topics", {}))),
            "topics_refused": b.get("topics_refused", 0),
            "curve_refused": b.get("curve_refused", 0),
            "rate": None,
            "topic_rates": {},
        }
        old = previous.broker if previous is not None else None
        if old is not None and old.get("pid") == b.get("pid") and b["version"] >= old.get("version", 0):
            seconds = current.at - previous.at  # type: ignore[union-attr]
            out["broker"]["rate"] = _rate(b["version"], old["version"], seconds)
            old_topics = old.get("topics", {})
            # A type missing from the last reply was new, unless that reply listed only the busiest.
            new_base = 0 if old.get("topic_count", len(old_topics)) <= len(old_topics) else None
            out["broker"]["topic_rates"] = {
                t: _rate(n, old_topics.get(t, new_base), seconds) for t, n in b.get("topics", {}).items()
            }

    lg = current.log
    if lg is not None:
        last = lg.get("last") or lg.get("last_version") or 0
        out["log"] = {
            "events": lg.get("events", 0),
            "last": last,
            "written": lg.get("written", 0),
            "lost": lg.get("lost", 0),
            "gaps": lg.get("gaps", 0),
            "curve_refused": lg.get("curve_refused", 0),
            "lag": max(b.get("version", 0) - last, 0) if b is not None else None,
        }

    out["transforms"] = {
        name: {
            "running": bool(t.get("running")),
            "consumed": t.get("consumed", 0),
            "published": t.get("published", 0),
            "done_version": t.get("done_version", 0),
            "lag_seconds": t.get("lag_seconds"),
            "behind": t.get("behind"),
            "age": max(0.0, time.time() - t["at"]) if isinstance(t.get("at"), (int, float)) else None,
        }
        for name, t in current.transforms.items()
    }

    s = current.sessions
    if s is not None:
        counts = s.get("requests", {})
        requests = {op: n for op, n in counts.items() if op not in _INTERNAL_COUNTS}
        out["sessions"] = {
            "sessions": s.get("sessions", 0),
            "requests": requests,
            "requests_total": sum(requests.values()),
            "errors": dict(s.get("errors", {})),
            "errors_total": sum(s.get("errors", {}).values()),
            "curve_refused": s.get("curve_refused", 0),
            "commits": counts.get("commits", 0),
            "rate": None,
            "service_ms": _per_request_ms(s.get("busy_seconds", 0.0), _served(counts)),
        }
        old_s = previous.sessions if previous is not None else None
        if old_s is not None and old_s.get("pid") == s.get("pid"):
            old_total = sum(n for op, n in old_s.get("requests", {}).items() if op not in _INTERNAL_COUNTS)
            seconds = current.at - previous.at  # type: ignore[union-attr]
            out["sessions"]["rate"] = _rate(out["sessions"]["requests_total"], old_total, seconds)
            old_counts = old_s.get("requests", {})
            out["sessions"]["service_ms"] = _per_request_ms(
                s.get("busy_seconds", 0.0) - old_s.get("busy_seconds", 0.0),
                _served(counts) - _served(old_counts),
            ) or out["sessions"]["service_ms"]
    return out


def _served(counts: dict[str, int]) -> int:
    """Requests answered, from the service's counters (``commits``/``batches`` count turns)."""
    return sum(n for op, n in counts.items() if op not in ("commits", "batches"))


def _per_request_ms(busy_seconds: float, requests: int) -> float | None:
    """Mean service time per request in milliseconds, or None with nothing served."""
    return busy_seconds * 1000 / requests if requests > 0 else None
