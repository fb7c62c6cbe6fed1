"""``pryxbus bench``: measure pryxbus and its peers in one run (the harness lives in ``bench/``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from bench.cli import add_arguments

    p = subparsers.add_parser(
        "bench",
        help="benchmark pryxbus against pyzmq, zmq.proxy, Redis and NATS",
        description="Run the benchmark harness: a table with ratios to the peers from the same run,"
        " results.json and PNG charts in --out. Missing peers are skipped (`make bench-peers`).",
    )
    add_arguments(p)
