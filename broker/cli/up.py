"""``pryxbus up``: run the whole stack (broker, session service) in the foreground, supervised."""

from __future__ import annotations

import argparse
import logging

from broker.cli.common import add_home, add_tcp, fail, server_endpoints
from broker.process import AlreadyRunning, announce, home_lock, stop_on_signals
from broker.supervisor import CHILDREN, Supervisor


def register(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join(spec.name for spec in CHILDREN)
    p = subparsers.add_parser(
        "up",
        help=f"run the whole stack ({names}) in the foreground",
        description=f"Run every part of a stack ({names}) as child processes. Prints one line"
        " containing 'ready' once every part accepts connections, restarts a part that dies, and"
        " stops them all cleanly on SIGINT/SIGTERM.",
    )
    add_home(p)
    add_tcp(p)
    p.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    home, endpoints = server_endpoints(args)
    try:
        with home_lock(home, "up"):
            if args.tcp:
                endpoints.write(home)  # clients given only the home find the tcp ports here
            supervisor = Supervisor(home, tcp=args.tcp)

            def ready() -> None:
                announce(
                    f"pryxbus up ready home={home} publish={endpoints.publish}"
                    f" subscribe={endpoints.subscribe} sessions={endpoints.sessions}"
                )

            with stop_on_signals(supervisor.stop):
                supervisor.run(on_ready=ready)
            announce("pryxbus up stopped")
    except AlreadyRunning as e:
        return fail(str(e))
    return 0
