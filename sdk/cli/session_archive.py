"""``pryxbus sessions export|import|stats``: sessions together with their logged events (issue 4).

These need the session service and the event log (not the broker). Exit status as for the other
``sessions`` actions: 0 done, 1 refused, 3 a server did not answer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdk.cli.common import add_target, fail_as, missing_socket, print_json, seconds_from, target


def register_actions(commands: argparse._SubParsersAction) -> None:
    from sdk.cli.sessions import ATTEMPTS, TIMEOUT_HELP

    def action(name: str, help: str) -> argparse.ArgumentParser:
        sp = commands.add_parser(name, help=help, description=help)
        add_target(sp, TIMEOUT_HELP)
        sp.add_argument("--json", action="store_true", default=True, help="print JSON (always: these print only JSON)")
        sp.set_defaults(func=run_archive, action=name, attempts=ATTEMPTS)
        return sp

    sp = action("export", "write a session and its events to a file (JSON Lines)")
    sp.add_argument("id")
    sp.add_argument("path", type=Path)
    sp = action("import", "restore a session and its events from an export file (idempotent)")
    sp.add_argument("path", type=Path)
    sp.add_argument("--overwrite", action="store_true", help="replace a different session with the same id")
    sp = action("stats", "one session's analytics, or without ID the bus-wide view (JSON)")
    sp.add_argument("id", nargs="?", default=None)
    sp.add_argument("--bucket", type=seconds_from(0.001), default=None, metavar="S", help="bus-wide: events per type per S seconds")


def run_archive(args: argparse.Namespace) -> int:
    import sdk
    from schemas.envelope import DEFAULT_MAX_EVENT_SIZE

    try:
        # max_event_size given: no broker round trip, only the session service and the log are needed.
        bus = sdk.connect(target(args), name="pryxbus-sessions", timeout=args.timeout / args.attempts,
                          max_event_size=DEFAULT_MAX_EVENT_SIZE)
    except sdk.InvalidEvent as e:
        return fail_as(args, 2, "bad_request", str(e))
    absent = missing_socket(bus.endpoints.sessions)
    if absent:
        bus.close()
        return fail_as(args, 3, "unavailable", absent)
    try:
        with bus:
            if args.action == "export":
                n = bus.sessions.export(args.id, args.path)
                print_json({"id": args.id, "path": str(args.path), "events": n})
            elif args.action == "import":
                session = bus.sessions.import_(args.path, overwrite=args.overwrite)
                print_json(session.to_dict())
            elif args.id is not None:
                print_json(bus.sessions.stats(args.id))
            else:
                print_json({"service": bus.sessions.stats(), "events": bus.log_summary(bucket=args.bucket)})
            return 0
    except sdk.BusUnavailable as e:
        return fail_as(args, 3, "unavailable", str(e))
    except (sdk.SessionError, sdk.InvalidEvent) as e:
        return fail_as(args, 1, getattr(e, "code", "invalid"), str(e))
    except sdk.RemoteError as e:
        return fail_as(args, 1, e.code, str(e))
    except OSError as e:  # the export file (an import's read errors are InvalidEvent)
        # The path given, not the temporary file beside it that the error names ("x.tmp: Is a directory").
        return fail_as(args, 1, "file", f"cannot write {args.path}: {e.strerror or e}")
