"""The edge's hot paths on its NATS connection, below nats-py's per-message work.

nats-py hands every message to a subscription as a ``Msg`` (its headers parsed into a dict), through
a queue and a task per subscription, after matching each protocol line with regular expressions;
and builds each publish as its own command. For the two subscriptions that carry an event each
(the acks of the edge's publishes, the ordered consumer's deliveries) :class:`Wire` reads the
messages itself and calls a plain function per message, in the read loop, before the next one is
read; every other message, and every other protocol line, goes to nats-py as before.

It relies on nats-py's internals (``nc._ps``, ``nc._process_msg``, ``nc._subs``, ``_send_command``,
the JetStream subscription's ``_jsi``), as of nats-py 2.16; :func:`Wire.install` checks that they
are there and refuses otherwise (the edge then refuses to start and says why). The ``cluster``
extra holds nats-py to 2.16.x for this.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from nats.errors import ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError, ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

log = logging.getLogger("pryxbus.edge")

Route = Callable[[bytes, bytes, bytes, "bytes | None"], bool]
"""A subscription's raw handler: ``(subject, reply, payload, headers)``, True if it took the
message, False to leave it to nats-py (``Msg``, queue, the subscription's callback)."""

_M, _H = ord("M"), ord("H")
_ACK_PREFIX = b"$JS.ACK."


class Wire:
    """Raw routes for some subscriptions of one nats-py connection, and raw publishes on it."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.routes: dict[Any, Route] = {}
        """Raw handlers by nats-py ``Subscription`` (kept across an ordered consumer's resets, which
        give the same subscription a new sid)."""
        self.after: list[Callable[[], None]] = []
        """Called once the messages read so far are handled, before the read loop waits again or
        hands a message to nats-py (e.g. to send what the handlers gathered)."""
        self._slow = nc._process_msg

    @classmethod
    def install(cls, nc: Any) -> Wire | None:
        """A Wire on ``nc``, its parser replaced; None if this nats-py lacks what it relies on."""
        needed = ("_ps", "_process_msg", "_subs", "_send_command", "_flush_pending", "_pending_data_size",
                  "_max_pending_size", "_flush_queue", "stats")
        if not all(hasattr(nc, name) for name in needed) or type(nc._ps) is not Parser:
            return None
        wire = cls(nc)
        nc._process_msg = wire._process_msg
        parser = _FastParser(nc, wire)
        parser.buf, parser.state = nc._ps.buf, nc._ps.state
        parser.msg_arg, parser.needed, parser.header_needed = nc._ps.msg_arg, nc._ps.needed, nc._ps.header_needed
        nc._ps = parser
        return wire

    def route(self, sub: Any, handler: Route) -> None:
        """Messages of nats-py subscription ``sub`` to ``handler`` first."""
        self.routes[sub] = handler

    def unroute(self, sub: Any) -> None:
        self.routes.pop(sub, None)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """nats-py's entry for a message its own parser read (after a line the fast parser leaves to it)."""
        handler = self.routes.get(self.nc._subs.get(sid))
        if handler is not None:
            try:
                if handler(subject, reply, data, headers):
                    return
            except Exception:  # as the fast parser: an error raised here would end nats-py's read loop
                log.exception("handling a message on %s", subject.decode(errors="replace"))
                return
        self._done()
        await self._slow(sid, subject, reply, data, headers)

    def _done(self) -> None:
        for hook in self.after:
            hook()

    def ordered(self, psub: Any, deliver: Callable[[int, bytes], None]) -> Any:
        """Route an ordered consumer's (nats-py's ``js.subscribe(..., ordered_consumer=True)``)
        stored messages to ``deliver(stream sequence, payload)``, doing what nats-py does for
        each (its sequence check, the flow-control and heartbeat bookkeeping). A message out of
        sequence, with another layout of reply subject, or while messages wait in the
        subscription's queue goes to nats-py, which resets the consumer or delivers it in order.
        Returns the routed subscription (for :meth:`unroute`)."""
        sub = psub._sub
        jsi = sub._jsi
        queue = sub._pending_queue
        stats = self.nc.stats

        def handle(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            if reply[:8] != _ACK_PREFIX or queue.qsize():
                return False
            tokens = reply.split(b".")
            if len(tokens) != 9:
                return False
            dseq = int(tokens[6])
            if dseq != jsi._dseq:
                return False
            sseq = int(tokens[5])
            jsi._dseq = dseq + 1
            jsi._sseq = sseq
            jsi._active = True
            jsi._fciseq += 1
            jsi._cmeta = reply.decode()
            sub._received += 1
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            deliver(sseq, data)
            return True

        self.route(sub, handle)
        return sub

    async def write(self, command: bytes, messages: int) -> None:
        """Send ``command`` (``messages`` PUB/HPUB commands, whole) as nats-py's publish would:
        buffered while reconnecting, up to its pending limit.

        Raises:
            ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError: as nats-py's publish.
        """
        nc = self.nc
        if nc.is_closed:
            raise ConnectionClosedError
        if nc.is_draining_pubs:
            raise ConnectionDrainingError
        size = len(command)
        if not nc.is_connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
            raise OutboundBufferLimitError
        stats = nc.stats
        stats["out_msgs"] += messages
        stats["out_bytes"] += size
        await nc._send_command(command)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()


class _FastParser(Parser):
    """nats-py's parser, with MSG and HMSG lines read without regular expressions and, for a routed
    subscription, handed over without an ``await``; anything else goes to nats-py's parser."""

    def __init__(self, nc: Any, wire: Wire) -> None:
        super().__init__(nc)
        self.wire = wire

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        if self.state != AWAITING_CONTROL_LINE:
            await self._by_nats_py()
            return
        wire = self.wire
        routes, subs = wire.routes, self.nc._subs
        pos, end = 0, len(buf)
        handoff = False
        """A line the loop leaves to nats-py's parser."""
        try:
            while pos < end:
                first = buf[pos]
                if first != _M and first != _H:
                    handoff = True
                    break
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                args = bytes(buf[pos:eol]).split()
                op, count = args[0], len(args)
                try:
                    if op == b"MSG" and count in (4, 5):
                        hsize, size, reply = 0, int(args[-1]), args[3] if count == 5 else b""
                    elif op == b"HMSG" and count in (5, 6):
                        hsize, size, reply = int(args[-2]), int(args[-1]), args[3] if count == 6 else b""
                    else:
                        handoff = True
                        break
                    sid = int(args[2])
                except ValueError:
                    raise ProtocolError("nats: malformed MSG") from None
                start = eol + 2
                stop = start + size
                if stop + 2 > end:
                    break  # the payload is not all here: read on
                subject = args[1]
                if hsize:
                    headers: bytes | None = bytes(buf[start : start + hsize])
                    payload = bytes(buf[start + hsize : stop])
                else:
                    headers, payload = None, bytes(buf[start:stop])
                pos = stop + 2
                handler = routes.get(subs.get(sid))
                if handler is not None:
                    try:
                        if handler(subject, reply, payload, headers):
                            continue
                    except Exception:
                        log.exception("handling a message on %s", subject.decode(errors="replace"))
                        continue
                del buf[:pos]
                pos = 0
                wire._done()
                await wire._slow(sid, subject, reply, payload, headers)
                end = len(buf)
        finally:
            if pos:
                del buf[:pos]
            wire._done()
        if handoff:
            await self._by_nats_py()

    async def _by_nats_py(self) -> None:
        """The rest of the buffer through nats-py's parser (its messages through
        :meth:`Wire._process_msg`, so routed ones still go to their handler)."""
        try:
            await super().parse()
        finally:
            self.wire._done()
