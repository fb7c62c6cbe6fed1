"""``pryxbus up``: run the whole stack (broker, session service, event log) in the foreground, supervised."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from broker.cli.options import add_tcp, server_endpoints, server_keys
from broker.logs import add_log_format
from broker.logs import configure as configure_logging
from broker.process import AlreadyRunning, announce, home_lock, stop_on_signals
from broker.supervisor.supervisor import CHILDREN, StartFailed, Supervisor
from schemas.endpoints import Endpoints
from sdk.cli.common import add_home, fail


def register(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join(spec.name for spec in CHILDREN)
    p = subparsers.add_parser(
        "up",
        help=f"run the whole stack ({names}) in the foreground",
        description=f"Run every part of a stack ({names}) as child processes. Prints one line"
        " containing 'ready' once every part accepts connections, restarts a part that dies, and"
        " stops them all cleanly on SIGINT/SIGTERM/SIGHUP.",
    )
    add_home(p)
    add_tcp(p)
    add_log_format(p)
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=metrics_address,
        default=None,
        help="serve Prometheus metrics (the figures of `pryxbus top`) at http://HOST:PORT/metrics"
        " (an IPv6 host in brackets: [::1]:9100); needs the 'metrics' extra (prometheus-client)",
    )
    p.add_argument(
        "--lifecycle-events",
        action="store_true",
        help="the broker publishes bus:started and bus:{publisher,subscriber}_{connected,disconnected}",
    )
    p.set_defaults(func=run_up)


def metrics_address(text: str) -> str:
    """An argparse ``type``: ``HOST:PORT`` or ``[IPv6]:PORT``, as given."""
    from broker.supervisor.metrics import parse_address

    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def run_up(args: argparse.Namespace) -> int:
    configure_logging(args.log_format)
    home, endpoints = server_endpoints(args)
    server_keys(args, home)  # --curve: refuse to start now rather than restart children that refuse
    stop_metrics = None
    if args.metrics:
        from broker.supervisor.metrics import MetricsUnavailable, serve
        from sdk.errors import BusUnavailable
        from sdk.security import resolve_client_keys

        try:
            curve = resolve_client_keys(True, home) if args.curve else None  # scrape as a client
            stop_metrics = serve(args.metrics, endpoints, curve=curve)
        except MetricsUnavailable as e:
            return fail(str(e))
        except (ValueError, OSError, BusUnavailable) as e:
            return fail(f"--metrics {args.metrics}: {e}")
        logging.getLogger("pryxbus.up").info("metrics at http://%s/metrics", args.metrics)
    try:
        return _run_up(args, home, endpoints)
    finally:
        if stop_metrics is not None:
            stop_metrics()


def _run_up(args: argparse.Namespace, home: Path, endpoints: Endpoints) -> int:
    try:
        with home_lock(home, "up"):
            endpoints.record(home)
            child_args = {spec.name: ("--log-format", args.log_format) for spec in CHILDREN}
            if args.lifecycle_events:
                child_args["broker"] += ("--lifecycle-events",)
            if args.curve:
                child_args = {name: (*extra, "--curve") for name, extra in child_args.items()}
            supervisor = Supervisor(home, tcp=args.tcp, child_args=child_args, log_format=args.log_format)

            def ready() -> None:
                announce(
                    f"pryxbus up ready home={home} publish={endpoints.publish}"
                    f" subscribe={endpoints.subscribe} sessions={endpoints.sessions}"
                )

            with stop_on_signals(supervisor.stop):
                supervisor.run(on_ready=ready)
            announce("pryxbus up stopped")
    except (AlreadyRunning, StartFailed) as e:
        return fail(str(e))
    return 0
