"""``pryxbus broker``: run the broker alone in the foreground."""

from __future__ import annotations

import argparse

import zmq

from broker.bus import reservation
from broker.bus.broker import Broker
from broker.bus.config import BOUNDED_BYTES, IN_BYTES, MAX_TOPICS, SUB_BYTES, BrokerConfig
from broker.bus.durable import LOG_BUDGET, LOG_BUDGET_EVENTS, MAX_PUBLISHERS
from broker.cli.options import add_tcp, server_endpoints, server_keys
from broker.logs import add_log_format
from broker.logs import configure as configure_logging
from broker.process import AlreadyRunning, announce, home_lock, stop_on_signals
from broker.security import SecurityError
from schemas.envelope import DEFAULT_MAX_EVENT_SIZE, MAX_RUN
from sdk.cli.common import add_home, fail, seconds_or_zero, whole_number


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "broker",
        help="run the broker alone (XSUB in, XPUB out, control)",
        description="Run the broker in the foreground. Prints a line containing 'ready' once it"
        " accepts connections; stops cleanly on SIGINT/SIGTERM/SIGHUP.",
    )
    add_home(p)
    add_tcp(p)
    add_log_format(p)
    add_broker_options(p)
    p.add_argument(
        "--lifecycle-events",
        action="store_true",
        help="publish bus:started and bus:{publisher,subscriber}_{connected,disconnected} events",
    )
    p.set_defaults(func=run_broker)


def add_broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sub-hwm",
        type=whole_number(0, 2**31 - 1),
        default=10_000,
        help="messages queued per subscriber before that subscriber starts losing them (default"
        " 10000; a message is one event, or under load a run of up to --max-run events of one type)",
    )
    p.add_argument(
        "--in-hwm",
        type=whole_number(0, 2**31 - 1),
        default=10_000,
        help="events queued per publisher before its publish blocks (default 10000)",
    )
    p.add_argument(
        "--sub-bytes",
        type=whole_number(0, 2**62),
        default=SUB_BYTES,
        metavar="BYTES",
        help=f"bytes queued per subscriber at the broker: caps --sub-hwm at BYTES / the largest message"
        f" the broker then sends (BYTES / 600, within 17-65 KiB, plus a topic: it cuts what is longer"
        f" into runs and fragments), as ZeroMQ counts messages (default {SUB_BYTES}: 10,027 messages, so --sub-hwm's 10,000;"
        f" {BOUNDED_BYTES}: 587, and 20 stalled subscribers cost under 256 MiB; 0: no cap)",
    )
    p.add_argument(
        "--in-bytes",
        type=whole_number(0, 2**62),
        default=IN_BYTES,
        metavar="BYTES",
        help=f"bytes queued per publisher into the broker: caps --in-hwm at BYTES / the largest message"
        f" a publisher may send (--max-event-size plus headers; default {IN_BYTES}: 639 of 1 MiB; 0: no cap)",
    )
    p.add_argument(
        "--max-event-size",
        type=whole_number(1, 2**31 - 1),
        default=DEFAULT_MAX_EVENT_SIZE,
        help=f"largest encoded event in bytes (default {DEFAULT_MAX_EVENT_SIZE})",
    )
    p.add_argument(
        "--log-hwm",
        type=whole_number(0, 2**31 - 1),
        default=1_000_000,
        help="messages queued for the event log's connection (default 1000000; within a bound on messages, plus room for the fragments of --log-budget); --log-budget stays below it, so publishers wait before this queue could overflow",
    )
    p.add_argument(
        "--await-log",
        type=seconds_or_zero,
        default=0.0,
        metavar="S",
        help="keep publishers waiting up to S seconds for the event log to subscribe, so that it"
        " misses nothing subscribers get (pryxbus up: 3; default 0: take events at once)",
    )
    p.add_argument(
        "--log-budget",
        type=whole_number(1, 2**62),
        default=LOG_BUDGET,
        metavar="BYTES",
        help=f"bytes of stamped events kept until the event log has them on disk, to send it again"
        f" after it restarts; when full, publishers wait (default {LOG_BUDGET}, at most"
        f" {LOG_BUDGET_EVENTS} events)",
    )
    p.add_argument(
        "--max-topics",
        type=whole_number(1, 1_000_000_000),
        default=MAX_TOPICS,
        metavar="N",
        help=f"event types the broker keeps a sequence for (~90 bytes each); an event of a new type"
        f" beyond N is refused, counted in stats as topics_refused and logged (default {MAX_TOPICS})",
    )
    p.add_argument(
        "--max-publishers",
        type=whole_number(1, 100_000_000),
        default=MAX_PUBLISHERS,
        metavar="N",
        help=f"identified publishers whose last number the broker remembers, to stamp an event sent"
        f" again only once; past N the least recently seen is forgotten (default {MAX_PUBLISHERS})",
    )
    p.add_argument(
        "--max-run",
        type=whole_number(1, 1024),
        default=MAX_RUN,
        help=f"most events of one type the broker sends as one message when they arrive together"
        f" (default {MAX_RUN}; 1 sends every event alone)",
    )


def broker_config(
    args: argparse.Namespace, endpoints, first_version: int = 1, home=None, curve=None
) -> BrokerConfig:
    return BrokerConfig(
        curve=curve,
        home=home,
        endpoints=endpoints,
        sub_hwm=args.sub_hwm,
        in_hwm=args.in_hwm,
        sub_bytes=args.sub_bytes,
        in_bytes=args.in_bytes,
        max_event_size=args.max_event_size,
        log_hwm=args.log_hwm,
        max_run=args.max_run,
        max_topics=args.max_topics,
        max_publishers=getattr(args, "max_publishers", MAX_PUBLISHERS),
        log_budget=getattr(args, "log_budget", LOG_BUDGET),
        await_log=max(0.0, args.await_log),
        lifecycle_events=getattr(args, "lifecycle_events", False),
        first_version=first_version,
    )


def run_broker(args: argparse.Namespace) -> int:
    configure_logging(args.log_format)
    home, endpoints = server_endpoints(args)
    curve = server_keys(args, home)
    try:
        with home_lock(home, "broker"):
            try:
                # Continue after every version reserved or logged in this home (issue 4).
                broker = Broker(broker_config(args, endpoints, reservation.first_version(home), home, curve))
            except zmq.ZMQError as e:
                return fail(f"broker cannot bind: {e}")
            except SecurityError as e:
                return fail(str(e))
            with broker, stop_on_signals(broker.stop):
                bound = broker.endpoints  # with the ports the system chose, on --tcp HOST:0
                if chosen := [name for name in endpoints.unbound if name not in ("sessions", "log")]:
                    bound.record_chosen(home, chosen)
                else:
                    bound.record(home)
                announce(
                    f"pryxbus broker ready publish={bound.publish} subscribe={bound.subscribe}"
                    f" control={bound.control} log_feed={bound.log_feed}{' curve=on' if curve else ''}"
                )
                broker.run()
            announce(f"pryxbus broker stopped at version {broker.version}")
    except AlreadyRunning as e:
        return fail(str(e))
    return 0
