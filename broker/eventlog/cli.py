"""``pryxbus event-log``: run the event log alone in the foreground (reading it is ``pryxbus log``)."""

from __future__ import annotations

import argparse
import os
import sqlite3

import zmq

from broker.cli.options import add_tcp, server_home, server_keys, with_overrides
from broker.eventlog.service import EventLog, EventLogConfig
from broker.logs import add_log_format
from broker.logs import configure as configure_logging
from broker.process import AlreadyRunning, announce, home_lock, stop_on_signals
from broker.security import SecurityError
from schemas.endpoints import Endpoints
from schemas.eventlog import MAX_INT
from sdk.cli.common import add_home, fail, seconds, whole_number


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
    endpoints = with_overrides(args, endpoints)
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
                service.endpoints.record_chosen(home, [n for n in endpoints.unbound if n == "log"])
                try:
                    if not service.await_broker(args.wait):  # stopped while waiting for the broker
                        announce("pryxbus event-log stopped before the broker answered")
                        return 0
                except TimeoutError as e:
                    return fail(str(e))
                announce(
                    f"pryxbus event-log ready log={service.endpoints.log} db={config.home / 'events.db'}"
                    f"{' curve=on' if config.curve else ''}"
                )
                service.run()
                announce(f"pryxbus event-log stopped at version {service.writer.last_version}")
    except AlreadyRunning as e:
        return fail(str(e))
    return 0
