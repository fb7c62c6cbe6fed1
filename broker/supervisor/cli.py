"""``pryxbus up``: run the whole stack (broker, session service, event log) in the foreground, supervised."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from broker.backbone.cli import retention_args
from broker.bus.config import SUB_BYTES
from broker.cli.options import add_tcp, server_endpoints, server_keys
from broker.logs import add_log_format
from broker.logs import configure as configure_logging
from broker.process import AlreadyRunning, announce, home_lock, stop_on_signals
from broker.supervisor.supervisor import CHILDREN, ChildSpec, StartFailed, Supervisor, Waits
from schemas.endpoints import Endpoints
from sdk.cli.common import add_home, fail, seconds, seconds_or_zero, whole_number


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
    add_tcp(p, endpoint_option=False)
    add_log_format(p)
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=metrics_address,
        default=None,
        help="serve Prometheus metrics (the figures of `pryxbus top`) at http://HOST:PORT/metrics"
        " (an IPv6 host in brackets: [::1]:9100; PORT 0: a port the system chooses, named in the"
        " ready line); needs the 'metrics' extra (prometheus-client)",
    )
    p.add_argument(
        "--lifecycle-events",
        action="store_true",
        help="the broker publishes bus:started and bus:{publisher,subscriber}_{connected,disconnected}",
    )
    p.add_argument(
        "--sub-bytes",
        metavar="BYTES",
        type=whole_number(0, 2**62),
        default=None,
        help="the broker's (or the edge's) byte budget per subscriber (`pryxbus broker --sub-bytes`; default"
        f" {SUB_BYTES}, 0: none): less bounds a stalled subscriber's memory, and shortens the bursts"
        " a subscriber that keeps up can take",
    )
    add_wait_options(p)
    from broker.backbone.cli import add_backbone_options

    add_backbone_options(p, required=False, retention=True)
    p.set_defaults(func=run_up)


def add_wait_options(p: argparse.ArgumentParser) -> None:
    """How long ``up`` waits and how often it retries (the defaults suit a real stack; tests shorten them)."""
    w = Waits()
    g = p.add_argument_group("waits and restarts")
    g.add_argument(
        "--lock-wait", type=seconds_or_zero, default=w.lock_wait, metavar="S",
        help="at start, wait up to S seconds for a part an earlier up left stopping to release its"
        " lock in the home (default %(default)g)",
    )
    g.add_argument(
        "--start-attempts", type=whole_number(1, 1000), default=w.start_attempts, metavar="N",
        help="give up when a part exits N times before the stack is first ready (default %(default)d)",
    )
    g.add_argument(
        "--restart-backoff", type=seconds_or_zero, default=w.backoff_first, metavar="S",
        help="wait S seconds before restarting a part that died, twice as long on each restart in a"
        " row (default %(default)g)",
    )
    g.add_argument(
        "--restart-backoff-max", type=seconds_or_zero, default=w.backoff_max, metavar="S",
        help="the longest wait between restarts (default %(default)g)",
    )
    g.add_argument(
        "--stable-after", type=seconds_or_zero, default=w.stable_after, metavar="S",
        help="a part up for S seconds is healthy again: its next restart waits --restart-backoff"
        " (default %(default)g)",
    )
    g.add_argument(
        "--stop-timeout", type=seconds, default=w.stop_timeout, metavar="S",
        help="kill a part that has not stopped S seconds after SIGTERM (default %(default)g)",
    )
    g.add_argument(
        "--await-log", type=seconds_or_zero, default=w.await_log, metavar="S",
        help="a (re)started broker keeps publishers waiting up to S seconds for the event log, so"
        " that the log misses nothing subscribers get (the broker's --await-log; default %(default)g)",
    )


def waits(args: argparse.Namespace) -> Waits:
    """The ``Waits`` the options give."""
    return Waits(
        lock_wait=args.lock_wait,
        start_attempts=args.start_attempts,
        backoff_first=args.restart_backoff,
        backoff_max=max(args.restart_backoff, args.restart_backoff_max),
        stable_after=args.stable_after,
        stop_timeout=args.stop_timeout,
        await_log=args.await_log,
    )


def metrics_address(text: str) -> str:
    """An argparse ``type``: ``HOST:PORT`` or ``[IPv6]:PORT``, as given."""
    from broker.supervisor.metrics import parse_address

    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def backbone_children(args: argparse.Namespace) -> tuple[ChildSpec, ...]:
    """``up --backbone``: an edge in place of the broker and the event log (the stream is the log),
    then the session service on the backbone's key-value bucket (shared by every home)."""
    extra = ("--backbone", ",".join(args.backbone), "--stream", args.stream, "--replicas", str(args.replicas))
    if args.creds:
        extra += ("--creds", args.creds)
    edge = ChildSpec("edge", "edge", extra=(*extra, *retention_args(args)), lock="broker.lock", sockets=("publish", "subscribe", "control", "log"))
    sessions = ChildSpec(
        "session-service", "session-service", extra=("--store", "nats-kv", *extra), lock="sessions.lock",
        sockets=("sessions",),
    )
    return edge, sessions


class MetricsFailed(RuntimeError):
    """``--metrics`` cannot be served (the message says why)."""


def start_metrics(args: argparse.Namespace, home: Path, endpoints: Endpoints) -> tuple[str, Callable[[], None]]:
    """Serve ``--metrics`` for the stack at ``endpoints``: its ``HOST:PORT`` and a function that stops it.

    Raises:
        MetricsFailed: prometheus-client is missing, or the address cannot be served.
    """
    from broker.supervisor.metrics import MetricsUnavailable, serve
    from sdk.errors import BusUnavailable
    from sdk.security import resolve_client_keys

    try:
        curve = resolve_client_keys(True, home) if args.curve else None  # scrape as a client
        address, stop = serve(args.metrics, endpoints, curve=curve)
    except MetricsUnavailable as e:
        raise MetricsFailed(str(e)) from None
    except (ValueError, OSError, BusUnavailable) as e:
        raise MetricsFailed(f"--metrics {args.metrics}: {e}") from None
    logging.getLogger("pryxbus.up").info("metrics at http://%s/metrics", address)
    return address, stop


def run_up(args: argparse.Namespace) -> int:
    configure_logging(args.log_format)
    if args.backbone is None and (given := retention_args(args)):
        return fail(f"{given[0]} is for the backbone's stream (with --backbone); the single-host"
                    " event log takes --retain-events and --retain-seconds: pryxbus event-log")
    home, endpoints = server_endpoints(args)
    server_keys(args, home)  # --curve: refuse to start now rather than restart children that refuse
    metrics = None
    if args.metrics and not endpoints.unbound:  # else once the parts named their ports
        try:
            metrics = start_metrics(args, home, endpoints)
        except MetricsFailed as e:
            return fail(str(e))
    try:
        return _run_up(args, home, endpoints, metrics)
    finally:
        if metrics is not None:
            metrics[1]()


def _run_up(
    args: argparse.Namespace, home: Path, endpoints: Endpoints, metrics: tuple[str, Callable[[], None]] | None
) -> int:
    failed: list[str] = []
    try:
        with home_lock(home, "up"):
            if not endpoints.unbound:  # else once the parts named their ports
                endpoints.record(home)
            children = CHILDREN if args.backbone is None else backbone_children(args)
            child_args = {spec.name: ("--log-format", args.log_format) for spec in children}
            for part in ("broker", "edge"):
                if args.lifecycle_events and part in child_args:
                    child_args[part] += ("--lifecycle-events",)
            for part in ("broker", "edge"):
                if args.sub_bytes is not None and part in child_args:
                    child_args[part] += ("--sub-bytes", str(args.sub_bytes))
            if args.curve:
                child_args = {name: (*extra, "--curve") for name, extra in child_args.items()}
            supervisor = Supervisor(
                home, tcp=args.tcp, children=children, waits=waits(args), child_args=child_args,
                log_format=args.log_format,
            )

            def ready() -> None:
                nonlocal metrics
                bound = supervisor.endpoints  # with the ports the parts chose, on --tcp HOST:0
                if endpoints.unbound:
                    bound.record(home)
                    if args.metrics:
                        try:
                            metrics = start_metrics(args, home, bound)
                        except MetricsFailed as e:
                            failed.append(str(e))
                            supervisor.stop()
                            return
                announce(
                    f"pryxbus up ready home={home} publish={bound.publish}"
                    f" subscribe={bound.subscribe} sessions={bound.sessions}"
                    + (f" metrics=http://{metrics[0]}/metrics" if metrics else "")
                )

            try:
                with stop_on_signals(supervisor.stop):
                    supervisor.run(on_ready=ready)
            finally:
                if endpoints.unbound and metrics is not None:
                    metrics[1]()
            if failed:
                return fail(failed[0])
            announce("pryxbus up stopped")
    except (AlreadyRunning, StartFailed) as e:
        return fail(str(e))
    return 0
