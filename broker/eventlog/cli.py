"""``pryxbus event-log`` (the log process) and ``pryxbus log tail|query|stats`` (reading it)."""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
from datetime import datetime

import zmq

from broker.cli.common import (
    add_home, add_target, add_tcp, fail, missing_socket, print_json, seconds, server_home, server_keys, target, whole_number,
)
from broker.eventlog.query import MAX_INT, MAX_PAGE
from broker.eventlog.service import EventLog, EventLogConfig
from broker.logs import add_log_format
from broker.logs import configure as configure_logging
from broker.process import AlreadyRunning, announce, home_lock, stop_on_signals
from broker.security import SecurityError
from schemas.endpoints import Endpoints


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "event-log",
        help="run the event log alone (appends every event to HOME/events.db, serves replays)",
        description="Run the event log in the foreground: subscribe to every event at the broker,"
        " append them to HOME/events.db, answer replay/query requests on the log endpoint. Prints a"
        " line containing 'ready' once the broker confirmed its subscription.",
    )
    add_home(p)
    add_tcp(p)
    add_log_format(p)
    p.add_argument("--retain-events", type=whole_number(1, MAX_INT), default=None, metavar="N",
                   help="keep at most the newest N events (N ≥ 1; default: all)")
    p.add_argument(
        "--retain-seconds", type=seconds, default=None, metavar="S", help="drop events older than S seconds (default: never)"
    )
    p.add_argument("--retain-interval", type=seconds, default=1.0, metavar="S", help="run retention every S seconds")
    p.add_argument("--rcvhwm", type=whole_number(1, 2**31 - 1), default=1_000_000,
                   help="events the log may queue before it loses some")
    p.add_argument(
        "--synchronous",
        choices=("OFF", "NORMAL", "FULL"),
        default="NORMAL",
        help="SQLite synchronous mode (NORMAL: survives any process crash; FULL: also a power cut)",
    )
    p.add_argument("--wait", type=seconds, default=30.0, help="seconds to wait for the broker at start")
    p.add_argument(
        "--nice",
        type=whole_number(0, 19),
        default=DEFAULT_NICE,
        metavar="N",
        help=f"run N steps below normal CPU priority, 0 to 19 (default {DEFAULT_NICE}): when the CPUs are"
        " busy the bus goes first and the log catches up from its queue",
    )
    p.set_defaults(func=run_event_log)

    log = subparsers.add_parser("log", help="read the event log (tail, query, stats)")
    sub = log.add_subparsers(dest="log_command", metavar="COMMAND", required=True)

    tail = sub.add_parser("tail", help="the last N logged events (JSON lines); -f keeps following live")
    add_target(tail)
    tail.add_argument("patterns", nargs="*", metavar="PATTERN")
    tail.add_argument("-n", "--lines", type=whole_number(1, MAX_PAGE), default=10,
                      help=f"how many logged events (default 10, at most {MAX_PAGE}; more with 'log query')")
    tail.add_argument("-f", "--follow", action="store_true", help="then print live events, seamlessly")
    tail.add_argument("--session", default=None, help="only events of this session id")
    tail.set_defaults(func=run_tail)

    query = sub.add_parser("query", help="logged events by pattern, version/time range, session (JSON lines)")
    add_target(query)
    query.add_argument("patterns", nargs="*", metavar="PATTERN")
    query.add_argument("--since", type=whole_number(0, MAX_INT), default=0, metavar="V", help="after version V (exclusive)")
    query.add_argument("--until", type=whole_number(0, MAX_INT), default=None, metavar="V", help="up to version V (inclusive)")
    query.add_argument("--from", dest="ts_from", type=_time, default=None, metavar="TIME", help="epoch seconds or ISO 8601")
    query.add_argument("--to", dest="ts_until", type=_time, default=None, metavar="TIME", help="epoch seconds or ISO 8601")
    query.add_argument("--session", default=None, help="only events of this session id")
    query.add_argument("--limit", type=whole_number(1, MAX_INT), default=None, metavar="N", help="stop after N events")
    query.set_defaults(func=run_query)

    stats = sub.add_parser("stats", help="the log's counters: events, gaps, lost, retention (JSON)")
    add_target(stats)
    stats.set_defaults(func=run_stats)


DEFAULT_NICE = 10


def run_event_log(args: argparse.Namespace) -> int:
    configure_logging(args.log_format)
    if args.nice:
        os.nice(args.nice)  # a background archiver: never take the CPU from the bus it records
    home = server_home(args)
    if args.tcp:
        try:
            endpoints = Endpoints.parse_tcp(args.tcp)
        except ValueError as e:
            return fail(f"--tcp: {e}")
    else:
        try:
            endpoints = Endpoints.for_home(home)
            if not endpoints.log:
                endpoints = endpoints.with_(log=Endpoints.ipc(home).log)
        except ValueError as e:
            return fail(str(e))
    config = EventLogConfig(
        home=home,
        endpoints=endpoints,
        retain_events=args.retain_events,
        retain_seconds=args.retain_seconds,
        retain_interval=args.retain_interval,
        rcvhwm=args.rcvhwm,
        synchronous=args.synchronous,
        curve=server_keys(args, home),
    )
    try:
        with home_lock(home, "event-log"):
            try:
                service = EventLog(config)
            except zmq.ZMQError as e:
                return fail(f"event log cannot bind {endpoints.log}: {e}")
            except SecurityError as e:
                return fail(str(e))
            except sqlite3.DatabaseError as e:  # not a SQLite file, a damaged one, or another schema
                return fail(f"cannot use {config.home / 'events.db'} as the event log: {e}")
            with service, stop_on_signals(service.stop):
                try:
                    if not service.await_broker(args.wait):  # stopped while waiting for the broker
                        announce("pryxbus event-log stopped before the broker answered")
                        return 0
                except TimeoutError as e:
                    return fail(str(e))
                announce(
                    f"pryxbus event-log ready log={endpoints.log} db={config.home / 'events.db'}"
                    f"{' curve=on' if config.curve else ''}"
                )
                service.run()
                announce(f"pryxbus event-log stopped at version {service.writer.last_version}")
    except AlreadyRunning as e:
        return fail(str(e))
    return 0


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
            ts_until=args.ts_until,
        )
        for n, event in enumerate(events):
            if args.limit is not None and n >= args.limit:
                break
            print_json(event.to_dict())

    return _with_log(args, work)


def run_tail(args: argparse.Namespace) -> int:
    def work(bus) -> None:
        events = bus.log_tail(*args.patterns, limit=args.lines, session_id=args.session)
        for event in events:
            print_json(event.to_dict())
        if not args.follow:
            return
        since = events[-1].version if events else bus.log_stats()["last"]
        with bus.subscribe(*args.patterns, since=since) as sub:
            for event in sub:
                if args.session is None or event.session_id == args.session:
                    print_json(event.to_dict())

    return _with_log(args, work)


def run_stats(args: argparse.Namespace) -> int:
    return _with_log(args, lambda bus: print_json(bus.log_stats()))
