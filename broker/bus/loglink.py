"""The broker's side of its link to the event log: the log's (un)subscription, its acks and hello,
the re-send of what it lacks, and asking it who published what (PROTOCOL.md "Event log").

A mixin of :class:`broker.bus.broker.Broker`, kept apart so that the broker's module stays about
its loop; it runs on the broker's thread, once per log message, never per event.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgpack
import zmq

from broker.bus.durable import LOG_BUDGET_EVENTS
from broker.bus.reservation import STEP
from schemas.envelope import LOG_ACK
from sdk.security import secure_client

if TYPE_CHECKING:
    from broker.bus.config import BrokerConfig
    from broker.bus.durable import Durable

log = logging.getLogger("pryxbus.broker")

SEED_WINDOW = 4 * LOG_BUDGET_EVENTS
"""Versions before the log's hello a restarted broker asks the log about (``publishers``): an event
its predecessor stamped but had not confirmed lies within its unlogged buffer of the log's end."""
HELLO_WAIT = 3.0
"""Seconds a broker that kept events for a returning log waits for its hello before taking events."""
SEED_TIMEOUT = 5.0
"""Seconds a starting broker waits for the log's ``publishers`` answer before it opens anyway."""


class LogLink:
    """What the broker does when the event log subscribes, leaves, acks, or is late."""

    config: BrokerConfig
    _durable: Durable
    _ctx: zmq.Context
    _closed_until: float | None
    _log_present: bool
    _seed_pending: bool
    version: int

    if TYPE_CHECKING:  # the broker's own

        def _read(self) -> None: ...
        def _open(self) -> None: ...
        def _hold(self) -> None: ...

    def _log_arrived(self) -> None:
        """The log subscribed: from now on events are confirmed at its acks. If it may lack some
        (the broker waited for it, or kept events it has not acked), the broker takes no event
        until its hello says what it has, and sends it the rest again first: sent live before
        them, newer events would show the log a gap that the re-sent ones then fill."""
        durable = self._durable
        self._log_present = True
        durable.logging = True
        if self._closed_until is not None or durable.unlogged:
            log.info("the event log is back; waiting for its hello to say what it has")
            durable.awaiting_hello = True
            # From now on the wait is for the hello (a log that subscribed late still gets it).
            hello_by = time.monotonic() + HELLO_WAIT
            if self._closed_until is None or self._closed_until < hello_by:
                self._closed_until = hello_by
            self._read()

    def _log_left(self) -> None:
        durable = self._durable
        self._log_present = False
        durable.awaiting_hello = False
        if self.config.await_log <= 0:
            durable.without_log()  # no log to wait for: what was stamped counts as confirmed
            self._read()
        elif self._closed_until is None:
            self._hold()  # the unlogged events are kept for the log's return

    def _log_late(self) -> None:
        """The wait for the log (or its hello) is over: take events. A log that subscribed but has
        not said hello yet is slow, not gone: what is stamped is kept and confirmed only once its
        acks cover it (its hello, when it comes, gets what it lacks sent again). One that is still
        away gets what is kept for it when it comes back, as long as the buffer holds it."""
        if self._log_present:
            log.warning("the event log subscribed but has not acked within the wait; taking events,"
                        " kept for it and confirmed once it acks them")
            if self._seed_pending:  # before the first event: publishers may be sending again
                self._seed(max(0, self.version - STEP))  # the log's end lies at most STEP below us
        else:
            log.warning("the event log did not subscribe within %gs; taking events without it,"
                        " keeping up to --log-budget of them for its return", self.config.await_log)
        self._open()

    def _buffer_full(self) -> None:
        """The unlogged buffer is full: with the log there, publishers wait for its acks; with
        the log away, waiting could last forever, so the kept events are given up (the log will
        record them as a gap) and confirmed at stamping from now on."""
        if self._log_present or self._closed_until is not None:
            self._read()
            return
        log.warning("the event log is away and %d events wait for it (--log-budget); confirming"
                    " without it from now on", self._durable.unlogged_events)
        self._durable.without_log()

    def _log_ack(self, msg: bytes) -> None:
        """``CONFIRM + !Q``: the log has every version through this one on disk."""
        durable = self._durable
        if len(msg) != LOG_ACK.size or not durable.logging:
            return
        version = LOG_ACK.unpack(msg)[1]
        was_full = durable.full
        if durable.awaiting_hello:
            durable.awaiting_hello = False
            durable.resend(version)
            durable.ack(version)  # its durable mark after what was sent again: the log's answer
            if self._seed_pending:
                self._seed(version)
            if self._closed_until is not None:
                log.info("the event log subscribed; taking events (it has everything through version %d)", version)
                self._open()
        else:
            durable.ack(version)
            if was_full and not durable.full:
                self._read()

    def _seed(self, through: int) -> None:
        """Ask the log who published its recent events (``publishers``), so that an event stamped
        by a broker killed before it confirmed it, and sent again, is not stamped twice."""
        self._seed_pending = False
        cfg = self.config
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        try:
            if cfg.curve is not None:
                secure_client(sock, cfg.curve.client)
            sock.connect(cfg.endpoints.log)
            request = {"op": "publishers", "since": max(0, through - SEED_WINDOW), "limit": cfg.max_publishers}
            sock.send(msgpack.packb(request, use_bin_type=True))
            if not sock.poll(int(SEED_TIMEOUT * 1000), zmq.POLLIN):
                log.warning("the event log did not say who published its recent events within %gs;"
                            " publishers re-sending events may get some stamped twice", SEED_TIMEOUT)
                return
            reply = msgpack.unpackb(sock.recv(), raw=False)
            rows = reply["result"]["publishers"] if reply.get("ok") else []
            log.info("remembering %d publisher(s) from the event log", self._durable.seed(rows))
        except (zmq.ZMQError, ValueError, TypeError, KeyError) as e:
            log.warning("cannot ask the event log who published its recent events: %s", e)
        finally:
            sock.close(linger=0)
