"""The broker's peers: its socket monitors, the count of publishers and subscribers by connection,
and the lifecycle events of their comings and goings (``bus:publisher_connected`` and the like),
stamped like any event by :meth:`Peers._emit` (as is ``bus:started``).

A mixin of :class:`broker.bus.broker.Broker`, kept apart so that the broker's module stays about
its loop; it runs on the broker's thread, once per connection event, never per event.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import zmq

from broker.bus.config import TRIM_DELAY
from broker.bus.memory import CAN_TRIM
from broker.sockets import parse_monitor_message
from schemas.envelope import encode_body

if TYPE_CHECKING:
    from broker.bus.config import BrokerConfig
    from broker.bus.durable import Durable

log = logging.getLogger("pryxbus.broker")

_NOBLOCK = int(zmq.NOBLOCK)

SUBSCRIBE_ALL = b"\x01"
"""XSUB's subscription to every topic: sent when the broker opens and on every new publisher
connection, since a bound XSUB does not replay it to publishers that connect later (trap §4.1)."""


class Peers:
    """How the broker counts its connections and announces them."""

    config: BrokerConfig
    xsub: zmq.Socket
    publishers: int
    subscribers: int
    _peers_in: set[int]
    _peers_out: set[int]
    _trim_at: float | None
    _closed_until: float | None

    version: int
    topic_seq: dict[bytes, int]
    lifecycle_events: int
    _reserved: int
    _held: list[tuple[str, dict[str, Any]]]
    _durable: Durable

    if TYPE_CHECKING:  # the gate's

        def _reserve(self, through: int) -> bool: ...

    def _handle_monitor(self, monitor: zmq.Socket, inbound: bool) -> None:
        # Peers are counted by connection (fd): a disconnect of a connection that never finished
        # its handshake (raw garbage) must not drive a count below zero.
        peers = self._peers_in if inbound else self._peers_out
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(_NOBLOCK))
            except zmq.Again:
                break
            kind = event["event"]
            change = ""
            if kind == zmq.EVENT_ACCEPTED:
                peers.add(event["value"])
                change = "connected"
            elif kind == zmq.EVENT_DISCONNECTED:
                if event["value"] in peers:
                    change = "disconnected"
                peers.discard(event["value"])
                # glibc keeps what a closed connection's queue freed (up to the byte budgets) in
                # its arenas unless asked; one trim serves every disconnect within TRIM_DELAY.
                if CAN_TRIM and self._trim_at is None:
                    self._trim_at = time.monotonic() + TRIM_DELAY
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED and inbound and self._closed_until is None:
                self.xsub.send(SUBSCRIBE_ALL)
            if change and self.config.lifecycle_events:
                self.publishers = len(self._peers_in)
                self.subscribers = len(self._peers_out)
                self._lifecycle(change, event, inbound)
        self.publishers = len(self._peers_in)
        self.subscribers = len(self._peers_out)

    def _lifecycle(self, change: str, event: dict[str, Any], inbound: bool) -> None:
        """Publish ``bus:{publisher,subscriber}_{connected,disconnected}`` for one connection (by
        accepted connection: libzmq's handshake events do not say which connection they are for)."""
        endpoint = event.get("endpoint", b"")
        self._emit(
            f"bus:{'publisher' if inbound else 'subscriber'}_{change}",
            {
                "connection": event["value"],
                "endpoint": endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint),
                "publishers": self.publishers,
                "subscribers": self.subscribers,
            },
        )

    def _emit(self, event_type: str, payload: dict[str, Any]) -> None:
        """Publish an event of the broker's own, stamped in the same version and topic sequences as
        every forwarded event (only with ``lifecycle_events``; never on the hot loop)."""
        if not self.config.lifecycle_events:
            return
        if self._closed_until is not None:  # the event log is not subscribed yet: it would miss it
            self._held.append((event_type, payload))
            return
        if self.version + 1 > self._reserved and not self._reserve(self.version + 1):
            log.warning("%s not published: no version could be reserved", event_type)
            return
        topic = event_type.encode()
        seq = self.topic_seq.get(topic, 0) + 1
        self.topic_seq[topic] = seq
        self.version += 1
        self.lifecycle_events += 1
        body = encode_body(payload, source="broker", session_id=None)
        self._durable.deliver([(topic, self.version, seq, [body], [len(body)], len(body))])
