"""``pryxbus session-service``: run the session service alone in the foreground."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import zmq

from broker.cli.options import add_tcp, server_endpoints, server_keys
from broker.logs import add_log_format
from broker.logs import configure as configure_logging
from broker.process import AlreadyRunning, announce, home_lock, path_lock, stop_on_signals
from broker.sessions.events import DEFAULT_LINGER
from sdk.spare_cpu import DEFAULT_SPIN
from schemas.endpoints import HomeNotOwned, check_owned
from sdk.cli.common import add_home, fail, whole_number

DB_FILE = "sessions.db"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "session-service",
        help="run the session service alone (sessions in SQLite over REQ/REP)",
        description="Run the session service in the foreground. Prints a line containing 'ready' once"
        " it accepts requests; stops cleanly on SIGINT/SIGTERM/SIGHUP. Publishes session:* events to the"
        " broker of the same home (or --tcp ports) when one is running.",
    )
    add_home(p)
    add_tcp(p)
    add_log_format(p)
    p.add_argument("--db", type=Path, default=None, help=f"the SQLite file (default: HOME/{DB_FILE})")
    p.add_argument("--no-events", action="store_true", help="do not publish session:* events")
    p.add_argument(
        "--event-linger",
        type=whole_number(0, 1000),
        default=round(DEFAULT_LINGER * 1000),
        metavar="MS",
        help="a session event goes to the broker at once, unless events went less than MS"
        " milliseconds ago: then it waits for the rest of those MS and goes with the others"
        " (default %(default)s; 0 sends each at once)",
    )
    p.add_argument(
        "--spin-us",
        type=whole_number(0, 10_000),
        default=round(DEFAULT_SPIN * 1e6),
        metavar="US",
        help="while requests come back to back (each within US microseconds of the last answer)"
        " and the other processes leave a CPU and a half unused, busy-poll up to US for the next one"
        " instead of sleeping: a client in a loop is answered sooner; sporadic requests never spin,"
        " nor does anything on a busy machine (default %(default)s; 0 never spins)",
    )
    p.add_argument(
        "--store", choices=("sqlite", "nats-kv"), default="sqlite",
        help="where sessions live: sqlite (HOME/sessions.db, default) or nats-kv (a JetStream"
        " key-value bucket on --backbone, shared by every home of the bus: docs/backbone.md)",
    )
    from broker.backbone.cli import add_backbone_options

    add_backbone_options(p, required=False)
    p.set_defaults(func=run_session_service)


def run_session_service(args: argparse.Namespace) -> int:
    from broker.sessions import ServiceConfig, SessionService
    from broker.security import SecurityError
    from broker.sessions.store import SchemaTooNew

    configure_logging(args.log_format)
    if args.store == "nats-kv":
        from broker.backbone.cli import run_kv_sessions

        return run_kv_sessions(args)
    home, endpoints = server_endpoints(args)
    db_path = args.db or home / DB_FILE
    if not db_path.parent.is_dir():
        return fail(f"--db: the directory {db_path.parent} does not exist")
    try:  # a --db outside the home: another user must not own it (or its directory)
        check_owned(db_path.parent, "directory of the database")
        check_owned(db_path, "database", writable=False)
    except HomeNotOwned as e:
        return fail(str(e))
    curve = server_keys(args, home)
    config = ServiceConfig(
        endpoints=endpoints,
        db_path=db_path,
        publish_events=not args.no_events,
        event_linger=args.event_linger / 1000,
        spin=args.spin_us / 1e6,
        curve=curve,
    )
    try:
        # One service per database file, whatever its home: the service caches replies to gets,
        # so it must be the file's only writer (broker/sessions/service.py).
        db_lock = db_path.with_name(db_path.name + ".lock")
        with home_lock(home, "sessions"), path_lock(db_lock, f"another session service is using {db_path}"):
            try:
                service = SessionService(config)
            except zmq.ZMQError as e:
                return fail(f"session service cannot bind {endpoints.sessions}: {e}")
            except (SchemaTooNew, SecurityError) as e:
                return fail(str(e))
            except sqlite3.DatabaseError as e:  # not a SQLite file, or a damaged one
                return fail(f"cannot use {db_path} as the session database: {e}")
            with service, stop_on_signals(service.stop):
                service.endpoints.record_chosen(home, [n for n in endpoints.unbound if n == "sessions"])
                announce(
                    f"pryxbus session-service ready sessions={service.endpoints.sessions} db={db_path}"
                    f"{' curve=on' if curve else ''}"
                )
                service.run()
            announce("pryxbus session-service stopped")
    except AlreadyRunning as e:
        return fail(str(e))
    return 0
