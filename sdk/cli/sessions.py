"""``pryxbus sessions list|get|create|ensure|rename|touch|delete``: sessions from the command line
(``export``, ``import`` and ``stats`` are in :mod:`sdk.cli.session_archive`).

Human-readable table by default, one JSON document with ``--json``. Exit status: 0 done,
1 refused (not found, invalid title, ...), 2 usage, 3 the session service did not answer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sdk.cli.common import add_target, fail_as, missing_socket, print_json, printable, target, whole_number

ATTEMPTS = 3
"""Tries per request (Lazy Pirate); together they take at most ``--timeout``."""
TIMEOUT_HELP = f"seconds to wait for an answer, in all (default 5; up to {ATTEMPTS} tries share them)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sessions",
        help="list, show, create and change sessions",
        description="Talk to the session service of a running stack (only the session service is needed).",
    )
    commands = p.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        sp = commands.add_parser(name, help=help, description=help)
        add_target(sp, TIMEOUT_HELP)
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table (errors too)")
        sp.set_defaults(func=run_sessions, action=name)
        return sp

    sp = action("list", "sessions, most recently updated first (at most 100 per page)")
    sp.add_argument("--limit", type=whole_number(1, 100), default=100, help="how many (1..100, default 100)")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--offset", type=whole_number(0, 2**63 - 1), default=0, help="skip this many first")
    where.add_argument("--cursor", default=None, help="continue after a previous page (its next_cursor)")
    sp = action("get", "one session")
    sp.add_argument("id")
    sp = action("create", "a new session (prints it, with its new id)")
    sp.add_argument("title")
    sp.add_argument("--id", default=None, help="use this id instead of a new UUIDv4")
    sp = action("ensure", "create the session if missing (never changes its title), touch it")
    sp.add_argument("id")
    sp.add_argument("title")
    sp = action("rename", "change a session's title")
    sp.add_argument("id")
    sp.add_argument("title")
    sp = action("touch", "set a session's updated_at to now")
    sp.add_argument("id")
    sp = action("delete", "delete a session (prints it as it was)")
    sp.add_argument("id")

    from sdk.cli.session_archive import register_actions

    register_actions(commands)  # export, import, stats (with the event log)


def run_sessions(args: argparse.Namespace) -> int:
    import sdk
    from sdk.sessions import SessionClient

    try:
        client = SessionClient.open(target(args), timeout=args.timeout / ATTEMPTS, retries=ATTEMPTS - 1)
    except sdk.InvalidEvent as e:
        return fail_as(args, 2, "bad_request", str(e))
    absent = missing_socket(client.endpoint)
    if absent:
        client.close()
        return fail_as(args, 3, "unavailable", absent)
    try:
        with client:
            a = args.action
            if a == "list":
                page = client.page(args.limit, cursor=args.cursor, offset=args.offset)
                sessions, next_cursor = list(page.sessions), page.next_cursor
                if args.json:
                    print_json({"sessions": [s.to_dict() for s in sessions], "next_cursor": next_cursor})
                else:
                    _table([s.to_dict() for s in sessions])
                    if next_cursor:
                        print(f"(more: --cursor {next_cursor})", file=sys.stderr)
                return 0
            if a == "get":
                session = client.get(args.id)
            elif a == "create":
                session = client.create(args.title, id=args.id)
            elif a == "ensure":
                session = client.ensure(args.id, args.title)
            elif a == "rename":
                session = client.rename(args.id, args.title)
            elif a == "touch":
                session = client.touch(args.id)
            else:
                session = client.delete(args.id)
            if args.json:
                print_json(session.to_dict())
            else:
                _table([session.to_dict()])
            return 0
    except sdk.BusUnavailable as e:
        return fail_as(args, 3, "unavailable", str(e))
    except sdk.SessionError as e:
        return fail_as(args, 1, e.code, str(e))


def _table(rows: list[dict[str, Any]]) -> None:
    columns = ["id", "title", "updated_at", "created_at"]
    cells = [[_cell(r[c], c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cell(value: str, column: str) -> str:
    if column.endswith("_at"):
        return value[:19].replace("T", " ") + "Z"  # seconds are enough to read; --json has it all
    text = printable(value)  # a title may hold anything, terminal escape sequences included
    return text if len(text) <= 60 else text[:57] + "..."
