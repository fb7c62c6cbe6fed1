"""``pryxbus transform``: derive a stream from a stream (rename the type, project or redact fields),
restartable from its own progress in the event log (sdk/transform.py)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from schemas.topics import InvalidType, check_type
from sdk.cli.common import add_target, fail, whole_number
from sdk.event import Event
from sdk.filters import compile_where


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transform",
        help="derive events from events (rename, project, redact), restartable",
        description="Consume the events matching PATTERN (with --session and --where), map each to one"
        " event (--rename, --project, --redact) and publish it with source NAME and the payload key"
        " _from = [source version, index]. Runs until Ctrl-C or SIGTERM; started again with the same"
        " NAME it resumes after the last event it has in the event log: nothing lost, nothing twice.",
        epilog="example: pryxbus transform audit agent:* --rename agent=audit --redact prompt --redact secret",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="the transform's name: its events' source, and where its progress is found")
    p.add_argument("patterns", metavar="PATTERN", nargs="+", help="type patterns to consume")
    p.add_argument("--session", default=None, metavar="ID", help="only events of this session id")
    p.add_argument("--where", default=None, metavar="EXPR", help="only events for which this JMESPath expression is true")
    p.add_argument(
        "--rename", default=None, metavar="OLD=NEW",
        help="the derived type: OLD's leading segments replaced by NEW (agent=audit: agent:spawned -> audit:spawned);"
        " OLD a whole type renames just that type",
    )
    p.add_argument(
        "--project", default=None, metavar="EXPR",
        help="the derived payload: this JMESPath expression over the event (type, version, seq, ts, source,"
        " session_id, payload), a map, e.g. \"{agent: payload.agent_id, at: ts}\" (default: the payload)",
    )
    p.add_argument("--redact", action="append", default=[], metavar="FIELD", help="drop this payload field (repeatable)")
    p.add_argument(
        "--from", dest="start", type=whole_number(0, 2**63 - 1), default=0, metavar="V",
        help="on its very first run, start after version V (default 0: every logged event first)",
    )
    p.add_argument(
        "--stats", type=float, default=0.0, metavar="S",
        help="print the transform's counters and lag as a JSON line on stderr every S seconds (default: never)",
    )
    add_target(p)
    p.set_defaults(func=run_transform)


def mapper(args: argparse.Namespace) -> Any:
    """The CLI's function: one derived event per source event.

    Raises:
        ValueError: a bad --rename, --project or --redact.
    """
    old = new = None
    if args.rename is not None:
        old, sep, new = args.rename.partition("=")
        if not sep:
            raise ValueError(f"--rename takes OLD=NEW, not {args.rename!r}")
        for part in (old, new):
            try:
                check_type(part)
            except InvalidType as e:
                raise ValueError(f"--rename: {e}") from None
    project = None
    if args.project is not None:
        import jmespath
        from jmespath.exceptions import JMESPathError

        try:
            project = jmespath.compile(args.project).search
        except JMESPathError as e:
            raise ValueError(f"--project: not a valid JMESPath expression: {args.project!r}: {e}".replace("\n", " ")) from None
    redact = tuple(args.redact)

    def rename(event_type: str) -> str:
        if old is None:
            return event_type
        if event_type == old:
            return new  # type: ignore[return-value]
        if event_type.startswith(old + ":"):
            return new + event_type[len(old) :]  # type: ignore[operator]
        return event_type

    def fn(event: Event) -> tuple[str, Any]:
        payload = project(vars(event)) if project is not None else event.payload
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        if redact:
            payload = {k: v for k, v in payload.items() if k not in redact}
        return rename(event.type), payload

    return fn


def run_transform(args: argparse.Namespace) -> int:
    import sdk
    from sdk.cli.events import CliError, open_bus
    from sdk.transform import Transform

    try:
        fn = mapper(args)
        compile_where(args.where)
    except (ValueError, sdk.InvalidEvent) as e:
        return fail(str(e), 2)
    try:
        with open_bus(args, name=args.name, timeout=args.timeout) as bus:
            transform = Transform(bus, args.patterns, fn, session_id=args.session, where=args.where, start=args.start)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: transform.stop())
            next_stats = time.monotonic() + args.stats if args.stats > 0 else None

            def report(t: Transform) -> bool:
                nonlocal next_stats
                if next_stats is not None and time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + args.stats
                    print(json.dumps(t.stats()), file=sys.stderr, flush=True)
                return False

            print(f"pryxbus transform: {args.name} running", file=sys.stderr, flush=True)
            transform.run(until=report)
    except (CliError, sdk.BusError) as e:
        return fail(str(e))
    return 0
