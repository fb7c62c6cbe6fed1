"""``pryxbus cluster up`` (a local NATS JetStream cluster on loopback, for trying a backbone on one
machine) and ``pryxbus edge`` (one host's edge on a backbone; ``pryxbus up --backbone`` runs it)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from broker.bus.config import IN_BYTES, SUB_BYTES
from broker.process import announce, stop_on_signals
from sdk.cli.common import fail, whole_number


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cluster",
        help="a local NATS JetStream cluster (the backbone) for trying it on one machine",
        description="Run a NATS JetStream cluster from the installed nats-server (the 'cluster' extra).",
    )
    sub = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    up = sub.add_parser(
        "up",
        help="start N nats-server nodes on loopback in the foreground",
        description="Start N nats-server nodes (JetStream, sync_interval: always), each storing under"
        " DIR/nI. Prints one line containing 'ready' with the servers' URLs once JetStream answers"
        " through every node and places a replicated stream on all of them; stops them on SIGINT/SIGTERM/SIGHUP.",
    )
    up.add_argument("--nodes", type=whole_number(1, 9), default=3, metavar="N", help="nodes (default %(default)d)")
    up.add_argument(
        "--dir", type=Path, default=Path("nats-cluster"), metavar="DIR",
        help="where each node keeps its config, log and store (default: %(default)s)",
    )
    up.add_argument("--host", default="127.0.0.1", help="the address every node listens on (default %(default)s)")
    up.add_argument(
        "--port", type=whole_number(0, 65000), default=0, metavar="PORT",
        help="the first node's client port; the next nodes follow, then the route ports (default 0:"
        " ports the system chooses, named in the ready line)",
    )
    up.set_defaults(func=run_cluster_up)
    register_edge(subparsers)


def run_cluster_up(args: argparse.Namespace) -> int:
    from broker.backbone.cluster import Cluster, ServerMissing

    try:
        cluster = Cluster(args.dir, nodes=args.nodes, host=args.host, port=args.port)
    except ServerMissing as e:
        return fail(str(e))
    stopping = threading.Event()
    with stop_on_signals(stopping.set):
        try:
            cluster.start()
        except (TimeoutError, OSError) as e:
            cluster.stop()
            return fail(f"the cluster did not start: {e}")
        try:
            pids = ",".join(str(node.pid) for node in cluster.members)
            announce(f"pryxbus cluster ready servers={cluster.servers} dir={cluster.directory} pids={pids}")
            while not stopping.wait(0.5):
                for node in cluster.exited():
                    if not node.reported:
                        node.reported = True
                        code = node.proc.returncode if node.proc is not None else None
                        print(f"pryxbus cluster: node {node.name} exited ({code})", file=sys.stderr, flush=True)
        finally:
            cluster.stop()
    announce("pryxbus cluster stopped")
    return 0


def add_backbone_options(p: argparse.ArgumentParser, *, required: bool, retention: bool = False) -> None:
    """``--backbone`` and the stream's options, shared by ``pryxbus edge``, ``pryxbus up`` and
    ``session-service --store nats-kv``; with ``retention`` the stream's limits too."""
    from broker.backbone.stream import DEFAULT_STREAM

    g = p.add_argument_group("backbone (NATS JetStream, docs/backbone.md)")
    g.add_argument(
        "--backbone", metavar="URLS", type=server_list, required=required, default=None,
        help="run an edge on this NATS JetStream cluster instead of a stamping broker: its servers,"
        " nats://HOST:PORT[,nats://HOST:PORT...]",
    )
    g.add_argument(
        "--stream", type=stream_name, default=DEFAULT_STREAM,
        help="the stream every edge of this bus shares, created if absent (default %(default)s)",
    )
    g.add_argument(
        "--replicas", type=whole_number(1, 5), default=3, metavar="N",
        help="the stream's replicas when the edge creates it (default %(default)d)",
    )
    g.add_argument("--creds", metavar="FILE", default=None, help="a NATS credentials file to connect with")
    if retention:
        add_retention_options(g)


def add_retention_options(g: argparse._ArgumentGroup) -> None:
    """The event log's ``--retain-events``/``--retain-seconds``, and ``--retain-bytes``: the
    stream's max messages, max age and max bytes (set on the stream when given, left as they are
    on an existing stream when not)."""
    from schemas.eventlog import MAX_INT
    from sdk.cli.common import seconds

    g.add_argument(
        "--retain-events", type=whole_number(1, MAX_INT), default=None, metavar="N",
        help="the stream keeps at most the newest N events (its max messages; default: all, or as"
        " the stream has it)",
    )
    g.add_argument(
        "--retain-seconds", type=seconds, default=None, metavar="S",
        help="the stream drops events older than S seconds (its max age; default: never, or as the stream has it)",
    )
    g.add_argument(
        "--retain-bytes", type=whole_number(1, MAX_INT), default=None, metavar="N",
        help="the stream keeps at most N bytes of events, dropping the oldest (its max bytes;"
        " default: no limit, or as the stream has it)",
    )
    g.add_argument(
        "--version-base", type=whole_number(0, MAX_INT - 1), default=None, metavar="N",
        help="the bus's versions continue after N (the stream's first sequence is N+1, set when it"
        " is created): for moving a single-host home onto a backbone; default: the home's last"
        " single-host version, or the stream's base; a different one is refused",
    )


def retention_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--retain-*`` and ``--version-base`` options given, as arguments for ``pryxbus edge``."""
    given: tuple[str, ...] = ()
    for option in ("retain_events", "retain_seconds", "retain_bytes", "version_base"):
        value = getattr(args, option, None)
        if value is not None:
            given += ("--" + option.replace("_", "-"), repr(value) if isinstance(value, float) else str(value))
    return given


def server_list(text: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls or not all(u.startswith(("nats://", "tls://")) for u in urls):
        raise argparse.ArgumentTypeError(f"expected nats://HOST:PORT[,nats://HOST:PORT...], got {text!r}")
    return urls


def stream_name(text: str) -> str:
    from broker.backbone.stream import STREAM_NAME

    if not STREAM_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"a stream name is 1 to 64 of A-Z a-z 0-9 _ -, got {text!r}")
    return text


def register_edge(subparsers: argparse._SubParsersAction) -> None:
    from broker.cli.options import add_tcp
    from broker.logs import add_log_format
    from sdk.cli.common import add_home

    p = subparsers.add_parser(
        "edge",
        help="run an edge alone: the broker's endpoints, on a NATS JetStream backbone",
        description="Run an edge in the foreground: the broker's publish, subscribe and control"
        " endpoints and the event log's, backed by a JetStream stream that every edge of the bus"
        " shares (docs/backbone.md). Prints a line containing 'ready' once it has caught up with the"
        " stream; stops on SIGINT/SIGTERM/SIGHUP.",
    )
    add_home(p)
    add_tcp(p)
    add_log_format(p)
    add_backbone_options(p, required=True, retention=True)
    p.add_argument(
        "--window", type=whole_number(1, 1_000_000), default=4000, metavar="N",
        help="publishes in flight to JetStream at most, then publishers wait (default %(default)d)",
    )
    p.add_argument(
        "--checkpoint-every", type=whole_number(1, 10**9), default=10_000, metavar="N",
        help="checkpoint the per-topic sequences every N events (default %(default)d)",
    )
    p.add_argument(
        "--sub-hwm", type=whole_number(0, 2**31 - 1), default=10_000, metavar="N",
        help="events queued per subscriber before that subscriber starts losing them (default %(default)d)",
    )
    p.add_argument(
        "--sub-bytes", type=whole_number(0, 2**62), default=SUB_BYTES, metavar="BYTES",
        help="bytes queued per subscriber at the edge, as `pryxbus broker --sub-bytes`: caps --sub-hwm at"
        " BYTES / the largest message the edge then sends (BYTES / 600, within 17-65 KiB: it cuts what"
        f" is longer into runs and fragments; default {SUB_BYTES}; 0: no cap)",
    )
    p.add_argument(
        "--in-bytes", type=whole_number(0, 2**62), default=IN_BYTES, metavar="BYTES",
        help="bytes queued per publisher into the edge: caps its queue at BYTES / the largest event"
        f" (default {IN_BYTES}; 0: no cap)",
    )
    p.add_argument(
        "--lifecycle-events", action="store_true",
        help="publish bus:started and bus:{publisher,subscriber}_{connected,disconnected} events (this"
        " edge's own) to the stream",
    )
    p.set_defaults(func=run_edge)


def run_edge(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from broker.backbone.edge import Edge, EdgeConfig, EdgeRefused
    from broker.bus import reservation
    from broker.cli.options import server_endpoints, server_keys
    from broker.logs import configure as configure_logging
    from broker.process import AlreadyRunning, home_lock
    from broker.security import SecurityError

    configure_logging(args.log_format)
    home, endpoints = server_endpoints(args)
    curve = server_keys(args, home)
    home_version = reservation.first_version(home) - 1  # a single-host bus's last version in this home
    if args.version_base is not None and args.version_base < home_version:
        return fail(f"--version-base {args.version_base} is below this home's last single-host version,"
                    f" {home_version}: its clients would see versions again")
    config = EdgeConfig(
        servers=args.backbone, stream=args.stream, replicas=args.replicas, creds=args.creds,
        endpoints=endpoints, window=args.window, checkpoint_every=args.checkpoint_every, sub_hwm=args.sub_hwm,
        sub_bytes=args.sub_bytes, in_bytes=args.in_bytes,
        retain_events=args.retain_events, retain_seconds=args.retain_seconds, retain_bytes=args.retain_bytes,
        version_base=args.version_base, home_version=home_version, curve=curve,
        lifecycle_events=args.lifecycle_events,
    )

    def ready(edge: Edge) -> None:
        bound = edge.endpoints
        if chosen := [name for name in endpoints.unbound if name in ("publish", "subscribe", "control", "log")]:
            bound.record_chosen(home, chosen)
        else:
            bound.record(home)
        announce(
            f"pryxbus edge ready publish={bound.publish} subscribe={bound.subscribe} control={bound.control}"
            f" log={bound.log} stream={config.stream} version={edge.version}{' curve=on' if curve else ''}"
        )

    async def main() -> Edge:
        edge = Edge(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, edge.stop)
        await edge.run(ready)
        return edge

    try:
        with home_lock(home, "broker"):
            try:
                edge = asyncio.run(main())
            except (EdgeRefused, SecurityError, OSError) as e:
                return fail(f"edge: {e}")
    except AlreadyRunning as e:
        return fail(str(e))
    announce(f"pryxbus edge stopped at version {edge.version}")
    return 0


def run_kv_sessions(args: argparse.Namespace) -> int:
    """``session-service --store nats-kv``: the session service on the backbone's key-value bucket."""
    import asyncio
    import signal

    from broker.backbone.sessions import KvSessionService, bucket_name
    from broker.cli.options import server_endpoints, server_keys
    from broker.process import AlreadyRunning, home_lock
    from broker.security import SecurityError

    if not args.backbone:
        return fail("--store nats-kv needs --backbone nats://HOST:PORT[,...]")
    home, endpoints = server_endpoints(args)
    service = KvSessionService(
        args.backbone, args.stream, endpoint=endpoints.sessions, replicas=args.replicas, creds=args.creds,
        publish_events=not args.no_events, curve=server_keys(args, home),
    )

    def ready(s: KvSessionService) -> None:
        endpoints.with_(sessions=s.endpoint).record_chosen(home, [n for n in endpoints.unbound if n == "sessions"])
        announce(f"pryxbus session-service ready sessions={s.endpoint} store=nats-kv bucket={bucket_name(args.stream)}"
                 + (" curve=on" if s.curve else ""))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, service.stop)
        await service.run(ready)

    try:
        with home_lock(home, "sessions"):
            try:
                asyncio.run(main())
            except (SecurityError, OSError) as e:
                return fail(f"session service: {e}")
    except AlreadyRunning as e:
        return fail(str(e))
    announce("pryxbus session-service stopped")
    return 0
