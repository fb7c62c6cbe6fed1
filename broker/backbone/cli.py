"""``pryxbus cluster up``: a local NATS JetStream cluster on loopback, for trying a backbone on one machine."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

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
        " through every node; stops them on SIGINT/SIGTERM/SIGHUP.",
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
