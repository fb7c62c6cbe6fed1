"""Options and helpers shared by the ``pryxbus`` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from schemas.endpoints import Endpoints, default_home, ensure_home


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="the stack's directory (default: $PRYXBUS_HOME, else ~/.local/state/pryxbus)",
    )


def add_tcp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        default=None,
        help="listen on tcp ports PORT..PORT+5 instead of ipc sockets (publish, subscribe, control,"
        " sessions, log, log feed); use 127.0.0.1 unless other machines must connect",
    )
    add_curve(parser)  # every part that listens can require CURVE


def add_curve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--curve",
        action="store_true",
        help="encrypt and authenticate every connection with CURVE: only clients whose public key is"
        " in HOME/keys/clients/ get in (create the keys with 'pryxbus keys generate')",
    )


def server_keys(args: argparse.Namespace, home: Path) -> Any:
    """The loaded ``ServerKeys`` with ``--curve``, else None; exits with a clear message when the
    keys or the allow-list are missing (a --curve server never serves unauthenticated)."""
    if not getattr(args, "curve", False):
        from sdk.security import KeyPaths

        if KeyPaths.for_home(home).exist():
            print(
                f"pryxbus: warning: {home}/keys holds CURVE keys but --curve is off: clients given this"
                " home use CURVE by default and will not get in (start with --curve, or connect with"
                " curve=False)",
                file=sys.stderr,
            )
        return None
    from broker.security import SecurityError, ServerKeys

    try:
        return ServerKeys.load(home)
    except SecurityError as e:
        raise SystemExit(f"pryxbus: {e}") from None


_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def add_target(parser: argparse.ArgumentParser) -> None:
    """For client commands: which stack to talk to."""
    add_home(parser)
    parser.add_argument(
        "--connect", metavar="tcp://HOST:PORT", default=None, help="a stack on tcp instead of a home"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the stack")


def target(args: argparse.Namespace) -> str | Path | None:
    return args.connect or args.home


def server_endpoints(args: argparse.Namespace) -> tuple[Path, Endpoints]:
    """The home (created, 0700) and the endpoints a server part binds."""
    home = ensure_home(args.home or default_home())
    if getattr(args, "tcp", None):
        try:
            endpoints = Endpoints.parse_tcp(args.tcp)
        except ValueError as e:
            raise SystemExit(f"pryxbus: --tcp: {e}") from None
        host = args.tcp.removeprefix("tcp://").rpartition(":")[0]
        if not host.startswith(_LOOPBACK) and not getattr(args, "curve", False):
            print(
                f"pryxbus: warning: listening on {host} without --curve: anyone who can reach this"
                " host can publish, read every event and change sessions",
                file=sys.stderr,
            )
    else:
        endpoints = Endpoints.ipc(home)
    return home, endpoints


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``, else a clear usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, not {text!r}")
        return value

    return parse


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> int:
    print(f"pryxbus: {message}", file=sys.stderr)
    return code
