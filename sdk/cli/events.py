"""``pryxbus pub``, ``pryxbus sub`` and ``pryxbus stats``: the event bus from the shell."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sdk
from sdk.cli.common import add_home, add_target, fail, print_json, seconds, target, tcp_target, whole_number
from schemas.topics import InvalidType, check_type
from sdk.bus import resolve_endpoints
from sdk.filters import event_filter
from sdk.security import resolve_client_keys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pub",
        help="publish an event (or one per stdin line)",
        description="Publish one event of type TYPE with a JSON payload, or with JSON '-' one event\n"
        "per line of stdin (blank lines skipped). The broker stamps the version.",
        epilog="examples: pryxbus pub channel:message '{\"text\": \"hi\"}' --session-id s-1\n"
        "          printf '{\"i\": 1}\\n{\"i\": 2}\\n' | pryxbus pub trace:event -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("type", metavar="TYPE", help="event type, e.g. channel:message")
    p.add_argument(
        "json", metavar="JSON", nargs="?", default=None, help="payload as JSON (default null); '-' reads stdin"
    )
    p.add_argument("--session-id", default=None, help="the session the event belongs to")
    p.add_argument("--name", default="cli", help="source name stamped on the event (default: cli)")
    p.add_argument("--validate", action="store_true", help="check the payload against the event catalogue")
    add_target(p)
    p.set_defaults(func=run_pub)

    p = subparsers.add_parser(
        "sub",
        help="print events as JSON lines",
        description="Subscribe and print every matching event as one JSON line (type, version, seq, ts,"
        " source, session_id, payload). No PATTERN means every event. Says on stderr when the"
        " subscription is live.",
        epilog="patterns: an exact type, '*' for one segment (agent:*), a final '**' for one or more"
        " (session:**), '**' alone for everything.",
    )
    p.add_argument("patterns", metavar="PATTERN", nargs="*", help="type patterns (default: all events)")
    p.add_argument("--count", type=whole_number(1, 2**63 - 1), default=None, metavar="N", help="exit after N events")
    p.add_argument(
        "--timeout",
        type=seconds,
        default=None,
        metavar="S",
        help="stop when no event arrives for S seconds (with --count, that is a failure)",
    )
    p.add_argument(
        "--policy",
        choices=("drop", "count"),
        default="drop",
        help="on falling behind: stop with an error (drop, default) or keep going (count)",
    )
    p.add_argument("--session", default=None, metavar="ID", help="only events of this session id")
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help="only events for which this JMESPath expression is true, over type, version, seq, ts,"
        " source, session_id, payload (e.g. \"payload.agent == 'a1'\")",
    )
    add_home(p)
    p.add_argument(
        "--connect", metavar="tcp://HOST:PORT", type=tcp_target, default=None, help="a stack on tcp instead of a home"
    )
    p.set_defaults(func=run_sub, connect_timeout=5.0)

    p = subparsers.add_parser(
        "stats",
        help="the broker's counters as JSON",
        description="Print the broker's health and counters (events in/out, per topic, drops and"
        " rejects, connected peers) as JSON.",
    )
    add_target(p)
    p.set_defaults(func=run_stats)


class CliError(Exception):
    """A failure to report in one line, without a traceback."""


@contextmanager
def open_bus(args: argparse.Namespace, *, name: str, timeout: float, **options: Any) -> Iterator[sdk.Bus]:
    """Connect to the stack the options name, failing fast with a clear message if none runs."""
    try:
        endpoints = resolve_endpoints(target(args))
    except sdk.InvalidEvent as e:
        raise CliError(str(e)) from None
    try:
        for path in endpoints.ipc_paths():
            if path.name == "con.sock" and not path.exists():
                raise CliError(
                    f"no broker running in {path.parent} (no {path.name});"
                    f" start one with `pryxbus up --home {path.parent}`"
                )
        curve = resolve_client_keys(None, target(args)) or False  # a home holding keys: CURVE
        bus = sdk.connect(endpoints, name=name, timeout=timeout, curve=curve, **options)
    except sdk.BusUnavailable as e:
        raise CliError(f"{e}; is the stack running?") from None
    except PermissionError as e:  # another user's home (0700)
        raise CliError(f"cannot use the stack in {target(args) or 'the default home'}: {e.strerror}: {e.filename}") from None
    with bus:
        yield bus


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond what a float holds")
    return value


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)  # strict: no NaN, no Infinity
    except ValueError as e:  # JSONDecodeError is one
        raise CliError(f"{where} is not valid JSON: {e}") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise CliError(f"{where} nests too deep to parse (at most about {sys.getrecursionlimit() - 50} levels)") from None


def _stdin_payloads() -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(sys.stdin, 1):
        if line.strip():
            yield f"stdin line {number}", _parse(line, f"stdin line {number}")


def run_pub(args: argparse.Namespace) -> int:
    sent = 0
    try:
        try:
            check_type(args.type)
        except InvalidType as e:
            raise CliError(str(e)) from None
        if args.json == "-":
            payloads: Iterator[tuple[str, Any]] = _stdin_payloads()
        else:  # bad JSON fails before connecting
            payload = None if args.json is None else _parse(args.json, "payload")
            payloads = iter([("payload", payload)])
        with open_bus(args, name=args.name, timeout=args.timeout, validate=args.validate) as bus:
            for where, payload in payloads:
                try:
                    bus.publish(args.type, payload, session_id=args.session_id)
                except sdk.InvalidEvent as e:
                    raise CliError(f"{where}: {e}" if where.startswith("stdin") else str(e)) from None
                sent += 1
    except (CliError, sdk.BusError) as e:
        before = f" ({sent} event(s) published before it)" if sent else ""
        return fail(f"{e}{before}")
    return 0


def run_sub(args: argparse.Namespace) -> int:
    received = 0
    try:
        try:
            event_filter(args.where, args.session)  # a bad expression fails before connecting
        except sdk.InvalidEvent as e:
            raise CliError(str(e)) from None
        with open_bus(args, name="cli-sub", timeout=args.connect_timeout) as bus:
            try:
                sub = bus.subscribe(*args.patterns, policy=args.policy, session_id=args.session, where=args.where)
            except sdk.InvalidEvent as e:
                raise CliError(str(e)) from None
            with sub:
                shown = " ".join(args.patterns) or "**"
                print(f"pryxbus sub: subscribed to {shown}", file=sys.stderr, flush=True)
                while args.count is None or received < args.count:
                    try:
                        event = sub.recv(timeout=args.timeout)
                    except sdk.BusTimeout:
                        if args.count is not None:
                            raise CliError(
                                f"got {received} of {args.count} event(s); none for {args.timeout:g}s"
                            ) from None
                        break
                    except sdk.BusClosed:
                        break
                    print_json(event.to_dict())
                    received += 1
    except sdk.SlowSubscriberError as e:
        return fail(f"{e} (after {received} event(s); try --policy count)")
    except (CliError, sdk.BusError) as e:
        return fail(str(e))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    try:
        with open_bus(args, name="cli-stats", timeout=args.timeout) as bus:
            stats = bus.stats()
    except (CliError, sdk.BusError) as e:
        return fail(str(e))
    sys.stdout.write(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n")
    return 0
