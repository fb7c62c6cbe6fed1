"""The bench's command line, shared by ``pryxbus bench`` and ``python -m bench``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

SCENARIO_NAMES = (
    "throughput", "fanout", "fanin", "latency", "isolation", "sessions", "eventlog", "filter", "transform", "backbone",
    "confirmed",
)
OPT_IN = ("backbone",)
"""Run only when named: the backbone needs the 'cluster' extra and a NATS cluster of its own."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small counts, 3 runs each: under a minute")
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIO_NAMES,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIO_NAMES)} (backbone only when"
        " named: edges on a local NATS JetStream cluster against nats-py, docs/backbone.md)",
    )
    p.add_argument(
        "--out", default="bench-results", metavar="DIR",
        help="where results.json, report.md and the PNG charts go (default: bench-results)",
    )
    p.add_argument(
        "--peers",
        default="all",
        help="peers to measure beside pryxbus: all (default), none, or a comma list of"
        " zmq, zmq.proxy, redis, nats, zmq.reqrep, sqlite, sidecar",
    )
    p.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3 with --quick, else 5)")
    p.add_argument(
        "--transport",
        choices=("ipc", "tcp"),
        default="ipc",
        help="how pryxbus and the pyzmq peers connect (Redis and NATS always use loopback tcp)",
    )
    p.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pryxbus bench``."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark pryxbus against pyzmq, zmq.proxy, Redis and NATS",
        description="Run the benchmark harness: a table with ratios to the peers from the same run,"
        " results.json and PNG charts in --out. Missing peers are skipped (`make bench-peers`).",
    )
    add_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("bench: --repeats must be at least 1")
    named = args.scenario or []
    if any(name in OPT_IN for name in named):
        from pathlib import Path

        from bench.backbone import run as run_backbone

        code = run_backbone(args.quick, Path(args.out))
        args.scenario = [name for name in named if name not in OPT_IN]
        if not args.scenario or code:
            return code
    from bench.runner import run as run_bench

    return run_bench(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure pryxbus against pyzmq, zmq.proxy, Redis and NATS in one run.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
