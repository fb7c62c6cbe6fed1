"""``pryxbus top``: a live terminal view of a running stack (plain ANSI clear and redraw)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sdk.cli.common import add_target, fail, print_json, seconds, target
from sdk.monitor import Sample, Sampler, figures
from schemas.endpoints import Endpoints
from sdk.errors import BusError
from sdk.security import resolve_client_keys

CLEAR = "\x1b[H\x1b[2J"
TOP_TOPICS = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "top",
        help="a live view of the stack (rates, peers, rejects, event-log lag, sessions)",
        description="Redraw, every INTERVAL seconds, the broker's event rate overall and per topic,"
        " connected publishers and subscribers, malformed and rejected messages, the event log's lag"
        " and losses, and the session service's requests and errors. A part that does not answer is"
        " shown as down. Ctrl-C quits.",
    )
    add_target(p)
    p.add_argument("--interval", type=seconds, default=1.0, help="seconds between frames (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame (no rates) and exit")
    p.add_argument(
        "--json",
        action="store_true",
        help="print each frame's figures as one JSON line instead of redrawing (for scripts)",
    )
    p.set_defaults(func=run_top)


def run_top(args: argparse.Namespace) -> int:
    try:
        endpoints = Endpoints.resolve(target(args))
    except ValueError as e:
        return fail(str(e))
    per_part = min(args.timeout, max(args.interval / 3, 0.2))
    try:
        curve = resolve_client_keys(None, target(args))  # a home with keys: CURVE
    except BusError as e:
        return fail(str(e))
    with Sampler(endpoints, timeout=per_part, curve=curve) as sampler:
        if args.once:
            show(figures(sampler.sample()), endpoints, as_json=args.json)
            return 0
        previous: Sample | None = None
        while True:
            began = time.monotonic()
            current = sampler.sample()
            show(figures(current, previous), endpoints, as_json=args.json, clear=True)
            previous = current
            time.sleep(max(args.interval - (time.monotonic() - began), 0.0))


def show(frame: dict[str, Any], endpoints: Endpoints, *, as_json: bool, clear: bool = False) -> None:
    if as_json:
        print_json(frame)  # one line per frame, flushed
        return
    sys.stdout.write((CLEAR if clear else "") + render(frame, endpoints))
    sys.stdout.flush()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _us(ms: float | None) -> str:
    return "-" if ms is None else f"{ms * 1000:.0f} µs"


def render(f: dict[str, Any], endpoints: Endpoints) -> str:
    """One frame of text (no escape codes) from :func:`sdk.monitor.figures`."""
    lines = [f"pryxbus top  {time.strftime('%H:%M:%S')}  control={endpoints.control}", ""]
    b = f.get("broker")
    if b is None:
        lines.append(f"broker        down  ({f['errors'].get('broker', '')})")
    else:
        lines += [
            f"broker        up  pid {b['pid']}  uptime {b['uptime']:.0f}s"
            f"  stats {_ms(f['latency'].get('broker'))}",
            f"  version     {b['version']}   events {b['events']}   rate {_rate(b['rate'])}",
            f"  publishers  {b['publishers']}   subscribers {b['subscribers']}",
            f"  malformed   {b['malformed']}   rejected {b['rejected']}",
        ]
        if b["topics_refused"]:
            lines.append(f"  refused     {b['topics_refused']} events of new types (--max-topics reached)")
    lg = f.get("log")
    if lg is None:
        lines.append(f"event log     down  ({f['errors'].get('log', '')})")
    else:
        lag = "-" if lg["lag"] is None else lg["lag"]
        lines += [
            f"event log     up  stats {_ms(f['latency'].get('log'))}",
            f"  events      {lg['events']}   last {lg['last']}   lag {lag}",
            f"  lost        {lg['lost']}   gaps {lg['gaps']}",
        ]
    s = f.get("sessions")
    if s is None:
        lines.append(f"sessions      down  ({f['errors'].get('sessions', '')})")
    else:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(s["errors"].items())) or "none"
        lines += [
            f"sessions      up  stats {_ms(f['latency'].get('sessions'))}",
            f"  sessions    {s['sessions']}   requests {s['requests_total']}   rate {_rate(s['rate'])}",
            f"  errors      {s['errors_total']} ({errors})",
            f"  service     {_us(s.get('service_ms'))} per request",
        ]
    for name, t in sorted(f.get("transforms", {}).items()):
        state = "running" if t["running"] else "stopped"
        lag = "-" if t["lag_seconds"] is None else f"{t['lag_seconds'] * 1000:.0f} ms"
        age = "" if t["age"] is None else f"  (status {t['age']:.0f}s old)"
        lines.append(
            f"transform     {name}  {state}  consumed {t['consumed']}  published {t['published']}"
            f"  done v{t['done_version']}  lag {lag}  behind {t['behind'] if t['behind'] is not None else '-'}{age}"
        )
    refused = {part: f[part]["curve_refused"] for part in ("broker", "log", "sessions") if f.get(part, {}).get("curve_refused")}
    if refused:
        parts = ", ".join(f"{part} {n}" for part, n in refused.items())
        lines.append(f"curve         {sum(refused.values())} connections refused ({parts})")
    if b is not None and b["topics"]:
        lines += ["", f"  {'TOPIC':<40} {'EVENTS':>12} {'RATE':>12}"]
        busiest = sorted(b["topics"].items(), key=lambda kv: (-(b["topic_rates"].get(kv[0]) or 0), -kv[1]))
        for topic, count in busiest[:TOP_TOPICS]:
            lines.append(f"  {topic:<40} {count:>12} {_rate(b['topic_rates'].get(topic)):>12}")
        if b["topic_count"] > TOP_TOPICS:
            lines.append(f"  ... {b['topic_count'] - TOP_TOPICS} more topics")
    return "\n".join(lines) + "\n"
