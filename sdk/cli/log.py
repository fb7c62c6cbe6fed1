"""``pryxbus log tail|query|stats``: read the event log of a running stack."""

from __future__ import annotations

import argparse
import math
from datetime import datetime

from schemas.eventlog import MAX_INT, MAX_PAGE
from sdk.filters import compile_where
from sdk.cli.common import add_target, fail, missing_socket, print_json, target, whole_number


_WHERE_HELP = (
    "only events for which this JMESPath expression is true, over type, version, seq, ts, source,"
    " session_id, payload (evaluated by this command on what the log sends)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    log = subparsers.add_parser("log", help="read the event log (tail, query, stats)")
    sub = log.add_subparsers(dest="log_command", metavar="COMMAND", required=True)

    tail = sub.add_parser("tail", help="the last N logged events (JSON lines); -f keeps following live")
    add_target(tail)
    tail.add_argument("patterns", nargs="*", metavar="PATTERN")
    tail.add_argument("-n", "--lines", type=whole_number(1, MAX_PAGE), default=10,
                      help=f"how many logged events (default 10, at most {MAX_PAGE}; more with 'log query')")
    tail.add_argument("-f", "--follow", action="store_true", help="then print live events, seamlessly")
    tail.add_argument("--session", default=None, help="only events of this session id")
    tail.add_argument("--where", default=None, metavar="EXPR", help=_WHERE_HELP)
    tail.set_defaults(func=run_tail)

    query = sub.add_parser("query", help="logged events by pattern, version/time range, session (JSON lines)")
    add_target(query)
    query.add_argument("patterns", nargs="*", metavar="PATTERN")
    query.add_argument("--since", type=whole_number(0, MAX_INT), default=0, metavar="V", help="after version V (exclusive)")
    query.add_argument("--until", type=whole_number(0, MAX_INT), default=None, metavar="V", help="up to version V (inclusive)")
    query.add_argument("--from", dest="ts_from", type=_time, default=None, metavar="TIME", help="epoch seconds or ISO 8601")
    query.add_argument("--to", dest="ts_until", type=_time, default=None, metavar="TIME", help="epoch seconds or ISO 8601")
    query.add_argument("--session", default=None, help="only events of this session id")
    query.add_argument("--where", default=None, metavar="EXPR", help=_WHERE_HELP)
    query.add_argument("--limit", type=whole_number(1, MAX_INT), default=None, metavar="N", help="stop after N events")
    query.set_defaults(func=run_query)

    stats = sub.add_parser("stats", help="the log's counters: events, gaps, lost, retention (JSON)")
    add_target(stats)
    stats.set_defaults(func=run_stats)


def _time(text: str) -> float:
    """An argparse ``type``: epoch seconds or ISO 8601, as epoch seconds."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError):
            value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a time (epoch seconds or ISO 8601): {text!r}")
    return value


def _with_log(args: argparse.Namespace, work) -> int:
    """Run ``work(bus)`` against the stack: 0 done, 1 refused, 2 a bad target, 3 nothing answered."""
    import sdk
    from schemas.envelope import DEFAULT_MAX_EVENT_SIZE

    try:
        compile_where(getattr(args, "where", None))
    except sdk.InvalidEvent as e:
        return fail(str(e), 2)

    try:
        # max_event_size given: no broker round trip; only the event log is needed (and the
        # broker for --follow).
        bus = sdk.connect(target(args), name="pryxbus-log", timeout=args.timeout, max_event_size=DEFAULT_MAX_EVENT_SIZE)
    except sdk.InvalidEvent as e:
        return fail(str(e), 2)
    except sdk.BusUnavailable as e:
        return fail(str(e), 3)
    absent = missing_socket(bus.endpoints.log)
    if absent:  # say so at once instead of after every retry
        bus.close()
        return fail(absent, 3)
    with bus:
        try:
            work(bus)
        except sdk.BusUnavailable as e:
            return fail(str(e), 3)
        except sdk.BusError as e:
            return fail(str(e))
    return 0


def run_query(args: argparse.Namespace) -> int:
    def work(bus) -> None:
        events = bus.replay(
            *args.patterns, since=args.since, until=args.until, session_id=args.session, ts_from=args.ts_from,
            ts_until=args.ts_until, where=args.where,
        )
        for n, event in enumerate(events):
            if args.limit is not None and n >= args.limit:
                break
            print_json(event.to_dict())

    return _with_log(args, work)


def run_tail(args: argparse.Namespace) -> int:
    def work(bus) -> None:
        keep = compile_where(args.where)
        events = bus.log_tail(*args.patterns, limit=args.lines, session_id=args.session)
        for event in events:
            if keep is None or keep(event):
                print_json(event.to_dict())
        if not args.follow:
            return
        since = events[-1].version if events else bus.log_stats()["last"]
        with bus.subscribe(*args.patterns, since=since, session_id=args.session, where=keep) as sub:
            for event in sub:
                print_json(event.to_dict())

    return _with_log(args, work)


def run_stats(args: argparse.Namespace) -> int:
    return _with_log(args, lambda bus: print_json(bus.log_stats()))
