"""An edge's publishing to the stream: publishers' events checked and sent as JetStream publishes,
a window of them in flight, their acks taken on one inbox subscription, the ones not acknowledged
sent again, and identified publishers confirmed in the order their events were sent.

Every publish carries the reply subject ``INBOX.TOKEN``; an ack settles the record of its token
and releases, from the oldest, every record settled before it. There is no future, queue or timer
per event: one watch task looks, a few times a second, for records whose ack is overdue or that
wait to be sent again. Each record keeps its publish as NATS protocol bytes (the same for a
retry); the publishes taken in one turn go to the connection as one write, and the acks are read
by the connection's :class:`~broker.backbone.wire.Wire`, not as nats-py messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from nats.errors import MaxPayloadError

from broker.backbone import stream as layout
from broker.backbone.wire import Wire
from schemas.envelope import (
    BATCH_IDENTITY,
    BATCH_PREFIX,
    BODY_MARK,
    CONFIRM,
    CONFIRM_MAX_BYTES,
    WANT_VERSION,
    MalformedEvent,
    confirm_entry,
    identify,
    split_batch,
)
from schemas.topics import is_valid_type

log = logging.getLogger("pryxbus.edge")

ACK_TIMEOUT = 5.0
"""Seconds without an ack for a publish, while none newer was acknowledged either, before it is
sent again (same token, same Msg-Id)."""
RETRY_FIRST, RETRY_MAX = 0.05, 2.0
"""Backoff before sending again a publish the stream refused for now: doubled each time, up to RETRY_MAX."""
WATCH_EVERY = 0.05
"""Seconds between two looks for overdue publishes."""
RETRIED_ERRORS = {10158}
"""JetStream errors worth sending again: 10158, the same Msg-Id still in process (its first copy
is being stored; the retry is answered as a duplicate with its sequence)."""

_BODY_MARKS = (0x95, layout.IDENTIFIED_MARK)
_SEQ = re.compile(rb'"seq":(\d+)[,}]')
_DUPLICATE = re.compile(rb'"duplicate":\s*true')
MAX_PUBLISHERS = 100_000
"""Publishers whose highest number is kept (the most recently seen); a forgotten one is taken as new."""
MAX_TYPES = 100_000
"""Valid event types remembered; past that many the set starts again."""
_NEVER = 1 << 63
_SENT, _AGAIN, _ACKED, _REFUSED = 0, 1, 2, 3
"""A record's state: sent (waiting for its ack), to be sent again (at ``due``), acked, refused for good."""


class StreamRefused(Exception):
    """JetStream answered a publish with an error (``code``, ``err_code`` as NATS documents them)."""

    def __init__(self, code: int | None, err_code: int | None, description: str) -> None:
        super().__init__(f"code={code} err_code={err_code} {description}")
        self.code, self.err_code = code, err_code


@dataclass(slots=True)
class _Publish:
    """One event sent to the stream, until it is released (acknowledged or refused, and every
    event sent before it too)."""

    token: int
    command: bytes
    """The PUB (HPUB, with its ``Nats-Msg-Id``) command, sent again as it is."""
    ident: tuple[int, int] | None
    sent: float
    state: int = _SENT
    tries: int = 0
    due: float = 0.0
    seq: int = 0


def parse_ack(data: bytes) -> tuple[int, bool]:
    """(stream sequence, duplicate) of JetStream's answer to a publish.

    Raises:
        StreamRefused: the answer is an error, a status message (no responders) or not JSON.
    """
    if not data:
        raise StreamRefused(503, None, "no responders")
    found = _SEQ.search(data)
    if found is not None and b'"error"' not in data:  # the usual {"stream":"S","seq":N[,"duplicate": true]}
        return int(found[1]), _DUPLICATE.search(data) is not None
    try:
        reply = json.loads(data)
    except ValueError:
        raise StreamRefused(None, None, "an ack that is not JSON") from None
    if isinstance(reply, dict) and isinstance(reply.get("seq"), int) and not reply.get("error"):
        return reply["seq"], bool(reply.get("duplicate"))
    error = reply.get("error") if isinstance(reply, dict) else None
    error = error if isinstance(error, dict) else {}
    raise StreamRefused(error.get("code"), error.get("err_code"), error.get("description", str(reply)))


def retried(error: StreamRefused) -> bool:
    """Whether a refusal is for now (no leader, the same Msg-Id in process), not for good."""
    return error.code == 503 or error.err_code in RETRIED_ERRORS


class StreamPublisher:
    """Sends publishers' events to the stream's ``subject`` over ``wire`` (on a nats-py connection),
    at most ``window`` unreleased; ``confirm(message)`` sends a confirmation (PROTOCOL.md §4.1) to the
    publishers. ``counters`` is the edge's: events_in, malformed, rejected, out_of_order, retries,
    refused, duplicates, confirmations.

    An identified publisher's numbers are taken in order, as the broker does (PROTOCOL.md §4.1): a
    number past the next one expected is refused (``out_of_order``); one at or below the highest
    taken goes to the stream again, where its ``Nats-Msg-Id`` makes it a duplicate, confirmed again."""

    def __init__(
        self, wire: Wire, subject: str, *, window: int, max_event_size: int, counters: dict[str, int],
        confirm: Callable[[bytes], None], version: int = 0,
    ) -> None:
        self.wire = wire
        self.nc = wire.nc
        self.subject = subject
        self.window = window
        self.max_event_size = max_event_size
        self.counters = counters
        self._confirm_send = confirm
        self._highest: dict[int, int] = {}
        self._types: set[bytes] = set()
        """Event types found valid (checked once each, as the broker does)."""
        """The highest number taken of each identified publisher, the most recent last."""
        self._waiting: dict[int, _Publish] = {}
        """Records sent and not acknowledged yet, by token."""
        self._order: deque[_Publish] = deque()
        """Records not released yet, oldest first."""
        self._room = asyncio.Event()
        self._room.set()
        self._tokens = 0
        self._again = 0
        """Records in state _AGAIN."""
        self._confirm: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        self._confirm_soon = False
        self._last_ack = time.monotonic()
        self._last_acked_sent = 0.0
        """When the newest acknowledged record was sent: an older one still waiting was lost."""
        self.version = version
        """The last version the edge's consumer delivered (the edge sets it; and calls
        :meth:`delivered` once it reaches ``held``)."""
        self.held = _NEVER
        """The version the oldest acknowledged record waits for the consumer to reach."""
        self._why = ""
        """Why a publish is to be sent again, until the next retry is logged."""
        self._prefix = ""
        self._pub = self._hpub = b""
        """The start of a PUB (HPUB) command up to the reply's token."""
        self._batch: list[bytes] = []
        self._batched: list[_Publish] = []
        """The publishes taken since the last :meth:`flush`, not written yet."""
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._order)

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."
        self._plen = len(self._prefix)
        self._pub = f"PUB {self.subject} {self._prefix}".encode()
        self._hpub = b"H" + self._pub
        sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_ack, pending_msgs_limit=1 << 20,
                                      pending_bytes_limit=1 << 28)
        self.wire.route(sub, self._on_raw_ack)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

    # -- intake --------------------------------------------------------------------------------

    async def take(self, frames: list[bytes]) -> None:
        """One message from the XSUB: a 2-frame event, or a batch (PROTOCOL.md §4.2) event by event."""
        if len(frames) in (3, 4) and frames[0][:1] == BATCH_PREFIX:
            try:
                bodies = split_batch(frames[1], frames[2])
                if len(frames) == 4:  # the batch's identity once (PROTOCOL.md §4.2): each event's own
                    publisher, first = BATCH_IDENTITY.unpack(frames[3])
                    if any(body[:1] != BODY_MARK for body in bodies):
                        raise MalformedEvent("a batch with an identity frame has anonymous bodies")
                    bodies = [identify(body, publisher, first + i) for i, body in enumerate(bodies)]
            except (MalformedEvent, struct.error):
                self.counters["rejected"] += 1
                return
            topic = frames[0][1:]
            for body in bodies:
                if len(self._order) >= self.window:
                    await self._wait_for_room()
                self._take(topic, body)
            return
        if len(frames) != 2:
            self.counters["malformed"] += 1
            return
        if len(self._order) >= self.window:
            await self._wait_for_room()
        self._take(frames[0], frames[1])

    def take_now(self, frames: list[bytes]) -> bool:
        """:meth:`take` without a coroutine, for a 2-frame event while the window has room; False
        (nothing done) otherwise."""
        if len(frames) != 2 or len(self._order) >= self.window:
            return False
        self._take(frames[0], frames[1])
        return True

    async def _wait_for_room(self) -> None:
        await self.flush()
        self._room.clear()
        await self._room.wait()

    def _take(self, topic: bytes, body: bytes) -> None:
        """One event, checked and, unless refused, added to the publishes of this turn."""
        if not body or body[0] not in _BODY_MARKS or len(body) > self.max_event_size:
            self.counters["rejected"] += 1
            return
        if topic not in self._types:
            if not is_valid_type(topic):
                self.counters["rejected"] += 1
                return
            if len(self._types) >= MAX_TYPES:
                self._types.clear()
            self._types.add(topic)
        who = layout.identity(body)
        if who is None:
            command = None
        else:
            publisher, number = who
            number &= ~WANT_VERSION
            highest = self._highest.pop(publisher, None)
            if highest is not None and number > highest + 1:
                # Past a hole (events lost on the way, e.g. with a connection that dropped): taking
                # it would let the cumulative confirmation cover the lost ones (PROTOCOL.md §4.1).
                self._highest[publisher] = highest
                self.counters["out_of_order"] += 1
                return
            self._highest[publisher] = number if highest is None or number > highest else highest
            if len(self._highest) > MAX_PUBLISHERS:
                del self._highest[next(iter(self._highest))]
            command = layout.msg_id_header(publisher, number)
        self._tokens += 1
        token = self._tokens
        data = layout.pack(topic, body)
        if command is None:
            command = b"%s%d %d\r\n%s\r\n" % (self._pub, token, len(data), data)
        else:
            command = b"%s%d %d %d\r\n%s%s\r\n" % (self._hpub, token, len(command), len(command) + len(data),
                                                     command, data)
        sent = _Publish(token, command, who, time.monotonic())
        self._waiting[token] = sent
        self._order.append(sent)
        self.counters["events_in"] += 1
        if len(data) > self.nc.max_payload:  # never storable: refused for good, as JetStream's refusals
            del self._waiting[token]
            self.counters["refused"] += 1
            log.warning("the stream refused an event: %s (%d bytes)", MaxPayloadError(), len(data))
            sent.state = _REFUSED
            self._release()
            return
        self._batch.append(command)
        self._batched.append(sent)

    async def flush(self) -> None:
        """Write the publishes taken since the last flush, as one command."""
        if not self._batch:
            return
        batch, sent = self._batch, self._batched
        self._batch, self._batched = [], []
        try:
            await self.wire.write(b"".join(batch), len(batch))
        except Exception as e:  # the connection's buffer is full while it reconnects, or it closed
            for one in sent:
                self._send_later(one, e)

    # -- acks ----------------------------------------------------------------------------------

    async def _on_ack(self, msg: Any) -> None:
        """An ack as a nats-py message (if the wire left one to nats-py)."""
        self._ack(int(msg.subject[self._plen :]), msg.data)

    def _on_raw_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        self._ack(int(subject[self._plen :]), data)
        return True

    def _ack(self, token: int, data: bytes) -> None:
        """JetStream's answer to one publish."""
        sent = self._waiting.pop(token, None)
        if sent is None:  # an answer to an earlier copy of a publish sent again, or to a released one
            return
        try:
            seq, duplicate = parse_ack(data)
        except StreamRefused as e:
            if retried(e):
                self._send_later(sent, e)
            else:
                self.counters["refused"] += 1
                log.warning("the stream refused an event: %s", e)
                sent.state = _REFUSED
                self._release()
            return
        now = time.monotonic()
        self._last_ack = now
        if sent.sent > self._last_acked_sent:
            self._last_acked_sent = sent.sent
        if duplicate:
            self.counters["duplicates"] += 1
        sent.seq = seq
        sent.state = _ACKED
        if self._order[0] is sent:
            self._release()

    def delivered(self) -> None:
        """The edge's consumer reached ``held``: release what waited for it."""
        self._release()

    def _release(self) -> None:
        """Release the oldest records while they are settled and, if stored, delivered to this edge
        (so a confirmed event is in what this edge serves: ``replay`` and ``since`` find it);
        confirm identified ones (cumulative per publisher, so only in the order they were sent)."""
        order, confirm, version = self._order, self._confirm, self.version
        self.held = _NEVER
        while order and order[0].state >= _ACKED:
            sent = order[0]
            if sent.state == _ACKED and sent.seq > version:
                self.held = sent.seq
                break
            order.popleft()
            if sent.ident is None or sent.state != _ACKED:
                continue
            publisher, number = sent.ident
            through, pairs = confirm.get(publisher, (0, []))
            if number & WANT_VERSION:
                number &= ~WANT_VERSION
                pairs.append((number, sent.seq))
            confirm[publisher] = (max(through, number), pairs)
        if confirm and not self._confirm_soon:
            self._confirm_soon = True
            asyncio.get_running_loop().call_soon(self._send_confirmations)
        if len(order) < self.window and not self._room.is_set():
            self._room.set()

    def _send_confirmations(self) -> None:
        """Every confirmation released since the last: one message per 64 KiB of entries."""
        self._confirm_soon = False
        entries, size = [], 1
        for publisher, (through, pairs) in self._confirm.items():
            entry = confirm_entry(publisher, through, pairs)
            if size + len(entry) > CONFIRM_MAX_BYTES and entries:
                self._confirm_send(CONFIRM + b"".join(entries))
                entries, size = [], 1
            entries.append(entry)
            size += len(entry)
        if entries:
            self._confirm_send(CONFIRM + b"".join(entries))
            self.counters["confirmations"] += 1
        self._confirm.clear()

    # -- sending again ------------------------------------------------------------------------

    def _send_later(self, sent: _Publish, error: Exception) -> None:
        """Send ``sent`` again after a backoff (the watch does it)."""
        now = time.monotonic()
        self._waiting.pop(sent.token, None)
        if sent.state != _AGAIN:
            self._again += 1
        sent.state = _AGAIN
        sent.due = now + min(RETRY_FIRST * (1 << min(sent.tries, 10)), RETRY_MAX)
        if getattr(error, "err_code", None) not in RETRIED_ERRORS:
            self._why = str(error) or type(error).__name__

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self._order:
                await self._resend(time.monotonic())

    async def _resend(self, now: float) -> None:
        """Send again the records due (refused for now) and the ones whose ack is overdue: sent
        ACK_TIMEOUT ago, while no ack came for as long or a newer one was acknowledged."""
        head = self._order[0]
        overdue = head.state == _SENT and now - head.sent > ACK_TIMEOUT
        if not overdue and not self._again:
            return
        stalled = now - self._last_ack > ACK_TIMEOUT
        for sent in list(self._order):
            if sent.state == _AGAIN:
                if sent.due > now:
                    continue
                self._again -= 1
            elif not (sent.state == _SENT and now - sent.sent > ACK_TIMEOUT
                      and (stalled or sent.sent < self._last_acked_sent)):
                continue
            if sent.state == _SENT:
                self._why = f"no ack within {ACK_TIMEOUT:.0f} s"
            if self._why and self.counters["retries"] % 1000 == 0:
                log.warning("JetStream: %s: sending again (%d retries so far)", self._why, self.counters["retries"])
                self._why = ""
            self.counters["retries"] += 1
            sent.tries += 1
            sent.state, sent.sent = _SENT, now
            self._waiting[sent.token] = sent
            try:
                await self.wire.write(sent.command, 1)
            except Exception as e:
                self._send_later(sent, e)
                break
