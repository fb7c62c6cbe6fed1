"""Options every server command shares: the home it runs in, ``--tcp`` and ``--curve``, its keys."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from broker.security import SecurityError, ServerKeys
from schemas.endpoints import ENDPOINT_NAMES, Endpoints, HomeNotOwned, check_owned, default_home, ensure_home
from sdk.security import KeyPaths


def add_tcp(parser: argparse.ArgumentParser, *, endpoint_option: bool = True) -> None:
    """``--tcp`` and ``--curve``, and ``--endpoint`` unless ``endpoint_option`` is off (for ``up``,
    which learns its parts' ports from their ready lines)."""
    parser.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        type=tcp_listen,
        default=None,
        help="listen on tcp ports PORT..PORT+5 instead of ipc sockets (publish, subscribe, control,"
        " sessions, log, log feed), or on ports the system chooses with PORT 0 (the ready line names"
        " them); use 127.0.0.1 unless other machines must connect",
    )
    if endpoint_option:
        add_endpoint(parser)
    add_curve(parser)  # every part that listens can require CURVE


def add_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        metavar="NAME=ENDPOINT",
        type=endpoint_override,
        action="append",
        default=[],
        help="use ENDPOINT (tcp://HOST:PORT) for NAME (one of " + ", ".join(ENDPOINT_NAMES) + ") instead"
        " of what --tcp gives: the part binds it if it is its own, else connects there (repeatable;"
        " pryxbus up passes the ports its parts bound with --tcp HOST:0)",
    )


def endpoint_override(text: str) -> tuple[str, str]:
    """An argparse ``type``: ``NAME=[tcp://]HOST:PORT`` with NAME one of the endpoints' names; gives
    (NAME, ``tcp://HOST:PORT``), an IPv6 host in brackets."""
    name, sep, endpoint = text.partition("=")
    host, colon, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not sep or name not in ENDPOINT_NAMES or not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected NAME=tcp://HOST:PORT with NAME one of {', '.join(ENDPOINT_NAMES)}, got {text!r}"
        )
    return name, Endpoints.tcp(host, 0).publish.removesuffix(":0") + f":{int(port)}"


def with_overrides(args: argparse.Namespace, endpoints: Endpoints) -> Endpoints:
    """``endpoints`` with the ``--endpoint NAME=ENDPOINT`` options applied."""
    return endpoints.with_(**dict(getattr(args, "endpoint", [])))


def add_curve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--curve",
        action="store_true",
        help="encrypt and authenticate every connection with CURVE: only clients whose public key is"
        " in HOME/keys/clients/ get in (create the keys with 'pryxbus keys generate')",
    )


def server_keys(args: argparse.Namespace, home: Path) -> ServerKeys | None:
    """The loaded ``ServerKeys`` with ``--curve``, else None; exits with a clear message when the
    keys or the allow-list are missing (a --curve server never serves unauthenticated)."""
    if not getattr(args, "curve", False):
        if KeyPaths.for_home(home).exist():
            print(
                f"pryxbus: warning: {home}/keys holds CURVE keys but --curve is off: clients given this"
                " home use CURVE by default and will not get in (start with --curve, or connect with"
                " curve=False)",
                file=sys.stderr,
            )
        return None
    try:
        return ServerKeys.load(home)
    except SecurityError as e:
        raise SystemExit(f"pryxbus: {e}") from None


_LOOPBACK = ("127.", "localhost", "::1", "[::1]")
"""Hosts that only this machine reaches: listening there without --curve needs no warning."""


def tcp_listen(text: str) -> str:
    """An argparse ``type``: ``HOST:PORT`` (or ``tcp://HOST:PORT``) a server can listen on, as given."""
    try:
        Endpoints.parse_tcp(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def server_home(args: argparse.Namespace) -> Path:
    """The home a server part runs in (created, 0700); a clear exit if it cannot be."""
    home = args.home or default_home()
    os.umask(0o077)  # every file a server creates (databases, sockets, locks, keys) is its user's alone
    try:
        home = ensure_home(home)
        check_home_files(home)
        return home
    except HomeNotOwned as e:
        raise SystemExit(f"pryxbus: {e}") from None
    except OSError as e:
        raise SystemExit(f"pryxbus: cannot use {home} as the home: {e.strerror or e}") from None


def check_home_files(home: Path) -> None:
    """Refuse a home holding files (sockets, databases, locks, keys) that another user owns, and
    make our own private (0600): created before this check existed, they may be readable by all.

    Raises:
        HomeNotOwned: a file in ``home`` (or ``home/keys``) belongs to another user.
    """
    for directory in (home, home / "keys", home / "keys" / "clients"):
        if not directory.is_dir():
            continue
        check_owned(directory, "directory")
        for path in directory.iterdir():
            check_owned(path, "directory" if path.is_dir() else "file", writable=False)  # a link: by its target
            try:
                info = path.stat()
            except OSError:
                continue  # a dangling link: nothing to read through it
            if not path.is_dir() and info.st_mode & 0o077 and info.st_uid == os.geteuid():
                try:
                    os.chmod(path, 0o600)
                except OSError:
                    pass  # an immutable file, a read-only mount: the part that uses it says so


def server_endpoints(args: argparse.Namespace) -> tuple[Path, Endpoints]:
    """The home (created, 0700) and the endpoints a server part binds."""
    home = server_home(args)
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
        try:
            endpoints = Endpoints.ipc(home)
        except ValueError as e:
            raise SystemExit(f"pryxbus: {e}") from None
    return home, with_overrides(args, endpoints)
