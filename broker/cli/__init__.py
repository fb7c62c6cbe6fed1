"""The ``pryxbus`` command: each subcommand lives beside what it runs, listed in ``COMMANDS`` below."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Command module -> the commands it adds; each module has register(subparsers). Listed in the order
# `pryxbus --help` shows them: server commands beside their servers under broker/, client commands
# under sdk/cli/ (they use only the SDK), the demo with its example programs, bench's own.
COMMANDS = {
    "broker.bus.cli": ("broker",),
    "broker.sessions.cli": ("session-service",),
    "broker.supervisor.cli": ("up",),
    "broker.eventlog.cli": ("event-log",),
    "broker.backbone.cli": ("cluster", "edge"),
    "sdk.cli.log": ("log",),  # log tail|query|stats
    "sdk.cli.events": ("pub", "sub", "stats"),
    "sdk.cli.transform": ("transform",),
    "sdk.cli.top": ("top",),
    "sdk.cli.sessions": ("sessions",),
    "examples.demo": ("demo",),
    "bench.cli": ("bench",),
    "broker.cli.keys": ("keys",),  # keys generate|add
}
"""Each command module and the commands its ``register`` adds (a test checks they agree)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone when it is one: a server a stack starts
    then imports only its own module, not every client command and the SDK (~0.1 s of CPU)."""
    from sdk.cli.common import JsonErrorParser

    parser = JsonErrorParser(  # usage errors of `sessions ... --json` are JSON on stdout too
        prog="pryxbus",
        description="pryxbus: a versioned event bus and session service over ZeroMQ.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    only = [name for name, commands in COMMANDS.items() if command in commands]
    for name in only or COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character gets an escape, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        from sdk.cli.common import JsonErrorParser  # imports sdk, zmq: Ctrl-C may come here too

        JsonErrorParser.wants_json = words[:1] == ["sessions"] and "--json" in words  # README: errors too
        parser = build_parser(words[0] if words else None)  # imports command modules: Ctrl-C may come
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except PermissionError as e:  # sdk.UnsafeHome, schemas.endpoints.HomeNotOwned: another user's home
        if e.errno is not None:
            raise
        print(f"pryxbus: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
