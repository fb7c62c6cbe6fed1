"""The ``pryxbus`` command: one subcommand module per concern, registered in ``COMMANDS`` below."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand group module -> what it provides; each module has register(subparsers).
COMMANDS = [
    "broker.cli.servers",  # broker
    "broker.cli.session_service",  # session-service
    "broker.cli.up",  # up
    "broker.cli.eventlog",  # event-log, log tail|query|stats
    "broker.cli.events",  # pub, sub, stats
    "broker.cli.top",  # top
    "broker.cli.sessions",  # sessions ...
    "broker.cli.demo",  # demo
    "broker.cli.bench",  # bench
    "broker.cli.keys",  # keys generate|add
]


def build_parser() -> argparse.ArgumentParser:
    from broker.cli.common import JsonErrorParser

    parser = JsonErrorParser(  # usage errors of `sessions ... --json` are JSON on stdout too
        prog="pryxbus",
        description="pryxbus: a versioned event bus and session service over ZeroMQ.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a command group not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character gets an escape, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        from broker.cli.common import JsonErrorParser  # imports sdk, zmq: Ctrl-C may come here too

        JsonErrorParser.wants_json = words[:1] == ["sessions"] and "--json" in words  # README: errors too
        parser = build_parser()  # imports every command module: ~0.2 s in which Ctrl-C may come
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
