"""When the broker reads its publishers: not before the event log it awaits has subscribed, not
while the log is away (at most ``await_log``), not while the disk refuses the version mark, not
while what the broker keeps for the log is full. Publishers wait meanwhile, in their queues.

A mixin of :class:`broker.bus.broker.Broker`, kept apart so that the broker's module stays about
its loop; it runs when one of those conditions changes, never per event.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import zmq

from broker.bus.peers import SUBSCRIBE_ALL

if TYPE_CHECKING:
    from broker.bus.config import BrokerConfig
    from broker.bus.durable import Durable
    from broker.bus.reservation import Reservation

log = logging.getLogger("pryxbus.broker")

RESERVE_RETRY = 1.0
"""Seconds between two tries to reserve versions while the disk refuses the mark."""


class Gate:
    """Whether the broker's poller watches its XSUB, and what opens or closes it."""

    config: BrokerConfig
    xsub: zmq.Socket
    _durable: Durable
    _reservation: Reservation | None
    _reserved: int
    _reserve_retry_at: float | None
    _closed_until: float | None
    _held: list[tuple[str, dict[str, Any]]]
    _poller: zmq.Poller | None
    _reading: bool

    if TYPE_CHECKING:  # the broker's own

        def _emit(self, event_type: str, payload: dict[str, Any]) -> None: ...

    def _open(self) -> None:
        """Let publishers in: subscribe to everything on every connection they have made so far,
        and start reading. (While closed nothing is read: a publisher that still believes in the
        broker before a crash may have queued events, and they wait for the log like the rest.)
        The broker's own events held meanwhile (``bus:started``, connections) go out first."""
        self._closed_until = None
        held, self._held = self._held, []
        for event_type, payload in held:  # stamped now, so the log has them like any event
            self._emit(event_type, payload)
        self.xsub.send(SUBSCRIBE_ALL)
        self._read()

    def _read(self) -> None:
        """Watch xsub for events unless the log is awaited or the disk refuses the version mark
        (then publishers wait, once their queues are full)."""
        on = self._closed_until is None and self._reserve_retry_at is None and not self._durable.full
        if self._poller is not None and on != self._reading:
            if on:
                self._poller.register(self.xsub, zmq.POLLIN)
            else:
                self._poller.unregister(self.xsub)
            self._reading = on

    def _reserve(self, through: int) -> bool:
        """Durably reserve the versions up to ``through`` (and a STEP beyond); whether it could.

        No event is stamped past the mark on disk (a restart after ``kill -9`` continues from it),
        so while the disk refuses the mark (full, or failing) the broker reads no events, and
        tries again every RESERVE_RETRY seconds; publishers wait meanwhile, as for the event log.
        """
        if self._reservation is None:  # nothing to keep: _reserved is already unbounded
            return True
        try:
            self._reserved = self._reservation.reserve(through)
        except OSError as e:
            if self._reserve_retry_at is None:
                log.error("cannot reserve versions in %s (%s); taking no events until it can",
                          self._reservation.path, e)
            self._reserve_retry_at = time.monotonic() + RESERVE_RETRY
            self._read()
            return False
        if self._reserve_retry_at is not None:
            log.warning("versions reserved again (through %d); taking events", self._reserved)
            self._reserve_retry_at = None
            self._read()
        return True

    def _hold(self) -> None:
        """The event log went away: take no more events until it is back (at most ``await_log``).

        Events stamped now would reach subscribers and never the log (replay, ``since=`` and the
        recover policy would miss them for good), so they wait in the publishers' queues instead.
        """
        log.warning("the event log went away; holding events until it subscribes again (at most %gs)",
                    self.config.await_log)
        self._closed_until = time.monotonic() + self.config.await_log
        self._read()
