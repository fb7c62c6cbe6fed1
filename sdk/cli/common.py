"""Options and output helpers of the ``pryxbus`` commands: which stack to talk to, argument types,
JSON and error output (the server commands use them too, beside options of their own)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from schemas.endpoints import Endpoints
from sdk.event import jsonable


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="the stack's directory (default: $PRYXBUS_HOME, else $XDG_STATE_HOME/pryxbus, else"
        " ~/.local/state/pryxbus)",
    )




def add_target(
    parser: argparse.ArgumentParser,
    timeout_help: str = "seconds to wait for each answer (default 5); a request that gets none is sent once more",
) -> None:
    """For client commands: which stack to talk to."""
    add_home(parser)
    parser.add_argument(
        "--connect", metavar="tcp://HOST:PORT", type=tcp_target, default=None, help="a stack on tcp instead of a home"
    )
    parser.add_argument("--timeout", type=seconds, default=5.0, help=timeout_help)


def tcp_target(text: str) -> str:
    """An argparse ``type``: ``tcp://HOST:PORT`` or ``HOST:PORT``, as ``tcp://HOST:PORT``."""
    try:
        Endpoints.parse_tcp(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text if text.startswith("tcp://") else f"tcp://{text}"


def seconds_from(low: float, *, above: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds from ``low`` (above it, with ``above``)."""
    bound = f" above {low:g}" if above else (", 0 or more" if low == 0 else f" from {low:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low < value if above else low <= value) or value == math.inf:
            raise argparse.ArgumentTypeError(f"must be a number of seconds{bound}, not {text!r}")
        return value

    return parse


seconds = seconds_from(0, above=True)
seconds_or_zero = seconds_from(0)


def target(args: argparse.Namespace) -> str | Path | None:
    return args.connect or args.home


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
    # Characters beyond ASCII as they are, unless stdout cannot encode them (then as \u escapes).
    ascii_only = (sys.stdout.encoding or "").lower().replace("-", "") != "utf8"
    sys.stdout.write(json.dumps(jsonable(data), allow_nan=False, ensure_ascii=ascii_only) + "\n")
    sys.stdout.flush()


class JsonErrorParser(argparse.ArgumentParser):
    """A parser whose usage errors, when the command line asks for ``--json``, are also the
    protocol's error reply on stdout (``{"ok": false, "code": "usage", ...}``), then exit 2 as usual."""

    wants_json = False
    """Set by ``main`` from the whole command line: the error may come before ``--json`` is parsed."""

    def error(self, message: str):  # type: ignore[override]
        if JsonErrorParser.wants_json:
            print_json({"ok": False, "code": "usage", "message": f"{self.prog}: {message}"})
        super().error(message)


def fail(message: str, code: int = 1) -> int:
    print(f"pryxbus: {printable(message)}", file=sys.stderr)
    return code


def fail_as(args: argparse.Namespace, status: int, code: str, message: str) -> int:
    """A failed client command: the message on stderr and, with ``--json``, the error on stdout as
    the protocol's error reply (``{"ok": false, "code": ..., "message": ...}``), for scripts."""
    if getattr(args, "json", False):
        print_json({"ok": False, "code": code, "message": message})
    return fail(f"{message} ({code})", status)


def missing_socket(endpoint: str) -> str | None:
    """Why nothing can answer at an ipc ``endpoint`` whose socket file does not exist (else None)."""
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://"):]):
        return f"nothing listens at {endpoint} (no such socket): is the stack running? ('pryxbus up')"
    return None


_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({0: "\\0", 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
_ESCAPES.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})  # bidi overrides


def printable(text: str) -> str:
    """``text`` safe to show on a terminal: control characters (escape sequences, carriage returns,
    bidirectional overrides) as backslash escapes; anything a str holds that cannot be encoded
    (lone surrogates) as ``\\udcxx``."""
    return text.translate(_ESCAPES).encode("utf-8", "backslashreplace").decode()
