"""The edge's peers: its publish and subscribe connections, counted from socket monitors, and with
``--lifecycle-events`` the broker's lifecycle events (PROTOCOL.md, Lifecycle events) published to
the stream, so they are stamped in the bus's one order like every event.

Each edge announces its own: ``bus:started`` when it starts serving, and the connections to its
own endpoints (the counts in a payload are that edge's). They go to the stream one at a time, in
the order the edge saw them, each with a ``Nats-Msg-Id`` of its own, so a retry is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from broker.backbone import stream as layout
from broker.sockets import parse_monitor_message
from schemas.envelope import encode_body

log = logging.getLogger("pryxbus.edge")

QUEUED = 10_000
"""Lifecycle events waiting for the stream at most (while no NATS server answers); then the
oldest are dropped, and counted."""
IN_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
OUT_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


class EdgePeers:
    """The connections of one edge; ``watch`` each monitor socket, run ``announce`` with lifecycle events."""

    def __init__(self, js: Any, subject: str, *, lifecycle_events: bool, resubscribe: Callable[[], Any]) -> None:
        self.js, self.subject = js, subject
        self.lifecycle_events = lifecycle_events
        self.resubscribe = resubscribe
        """Sends XSUB's subscription again: a bound XSUB does not replay it to later publishers."""
        self.inbound: set[int] = set()
        self.outbound: set[int] = set()
        self.published = 0
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._ids = f"edge:{uuid.uuid4().hex}"

    @property
    def publishers(self) -> int:
        return len(self.inbound)

    @property
    def subscribers(self) -> int:
        return len(self.outbound)

    def emit(self, event_type: str, payload: dict[str, Any]) -> None:
        """Queue a lifecycle event for the stream (nothing without ``lifecycle_events``)."""
        if not self.lifecycle_events:
            return
        if self._queue.qsize() >= QUEUED:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait((event_type, payload))

    async def watch(self, monitor: zmq.asyncio.Socket, *, inbound: bool) -> None:
        """Count one socket's connections from its monitor (by accepted connection, as the broker:
        a disconnect of one never accepted changes nothing)."""
        peers = self.inbound if inbound else self.outbound
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            kind, fd = event["event"], event["value"]
            if inbound and kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:  # as the broker: once per connection
                self.resubscribe()
            if kind == zmq.EVENT_ACCEPTED:
                peers.add(fd)
                change = "connected"
            elif kind == zmq.EVENT_DISCONNECTED and fd in peers:
                peers.discard(fd)
                change = "disconnected"
            else:
                continue
            endpoint = event.get("endpoint", b"")
            self.emit(f"bus:{'publisher' if inbound else 'subscriber'}_{change}", {
                "connection": fd,
                "endpoint": endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint),
                "publishers": self.publishers, "subscribers": self.subscribers,
            })

    async def announce(self) -> None:
        """Publish the queued lifecycle events to the stream, in order, each retried until stored."""
        number = 0
        while True:
            event_type, payload = await self._queue.get()
            number += 1
            data = layout.pack(event_type.encode(), encode_body(payload, source="broker", session_id=None))
            delay = 0.05
            while True:
                try:
                    await self.js.publish(self.subject, data, timeout=5,
                                          headers={layout.MSG_ID: f"{self._ids}:{number}"})
                    break
                except Exception as e:
                    if delay == 0.05:  # once per event: an outage is logged by the edge
                        log.warning("%s not published yet (%s); retrying", event_type, e or type(e).__name__)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 2.0)
            self.published += 1
