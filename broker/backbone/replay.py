"""The event log's ``replay`` and ``tail`` served by an edge from the stream: an ordered consumer
from the first version asked for, each event with the per-topic sequence the edge counted (or
counts again from a checkpoint, for versions older than it remembers).

A replay comes in pages, each asking from where the last one ended. The consumer a page read
from stays open for the next (:class:`Readers`): a new consumer per page costs a request, and the
server pushes it events past the page, read for nothing once it closes (a replay of 40,000 events
made an edge read 84,000 to 110,000)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from broker.backbone import stream as layout
from broker.backbone.publishing import ACK_TIMEOUT, RETRY_FIRST, RETRY_MAX
from schemas.envelope import decode_header
from schemas.topics import compile_matcher

if TYPE_CHECKING:
    from broker.backbone.edge import Edge

log = logging.getLogger("pryxbus.edge")

MAX_PAGE = 20_000
TAIL_SCAN = 10_000
"""``tail`` looks at most this many newest events for matches."""
READER_PATIENCE = 30.0
"""Seconds a replay keeps trying to open its consumer while JetStream has no leader to create it."""
READER_IDLE = 10.0
"""Seconds a consumer left open by a page waits for the next page before it is closed."""
MAX_READERS = 16
"""Consumers kept open between pages at most (the least recently used are closed first)."""
HELD_BYTES = 64 * 1024 * 1024
"""Bytes of events a consumer kept between pages may receive; past that it is closed (a client
that does not come back must not make the edge buffer the stream)."""


async def replay(edge: Edge, request: dict[str, Any]) -> dict[str, Any]:
    """One page of ``replay`` (PROTOCOL.md, the event log's ``replay``)."""
    since = int(request.get("since", 0) or 0)
    until = request.get("until")
    until = None if until is None else int(until)
    limit = max(1, min(int(request.get("limit", 5000) or 5000), MAX_PAGE))
    matches = event_filter(request)
    last = edge.version  # what this edge has counted: everything up to it is in the stream
    end = last if until is None else min(until, last)
    rows: list[list[Any]] = []
    cursor = since
    if end > since:
        readers: Readers = edge.readers
        reader = readers.take(since + 1) or await Reader.start(edge, since + 1)
        try:
            while (event := await reader.next(end)) is not None:
                version, seq, topic, body = event
                cursor = version
                if matches(topic, body):
                    rows.append([version, seq, topic.decode(), body])
                    if len(rows) == limit:
                        break
        except BaseException:
            await reader.close()
            raise
        if cursor >= end:  # the page reached the end asked for: a next page would start over
            await reader.close()
        else:
            readers.keep(reader)
    exhausted = cursor >= end
    done = exhausted and (until is None or last >= until)
    if exhausted and until is not None and last >= until:
        cursor = until
    return {"events": rows, "next": max(cursor, since), "done": done, "exhausted": exhausted,
            "last": last, "imported": []}


async def tail(edge: Edge, request: dict[str, Any]) -> dict[str, Any]:
    """The newest ``limit`` matching events among the last TAIL_SCAN (the event log's ``tail``)."""
    limit = max(1, min(int(request.get("limit", 10) or 10), MAX_PAGE))
    matches = event_filter(request)
    last = edge.version
    picked: deque[list[Any]] = deque(maxlen=limit)
    start = max(edge.base + 1, last - max(limit, TAIL_SCAN) + 1)
    if last >= start:
        async for version, seq, topic, body in read(edge, start, last):
            if matches(topic, body):
                picked.append([version, seq, topic.decode(), body])
    return {"events": list(picked), "last": last}


async def read(edge: Edge, start: int, end: int) -> AsyncIterator[tuple[int, int, bytes, bytes]]:
    """(version, topic_seq, topic, body) of the stream's events ``start..end``, in order."""
    reader = await Reader.start(edge, start)
    try:
        while (event := await reader.next(end)) is not None:
            yield event
    finally:
        await reader.close()


class Reader:
    """An ordered consumer handing out the stream's events from ``position`` on, each with its
    topic sequence: the edge's own record of it, or counted here from a checkpoint (``seqs``)
    for versions older than the edge remembers. The consumer's messages come from the
    connection's wire and are only appended to a list (a ``next_msg`` per event would cost a
    future and a wake-up each)."""

    def __init__(self, edge: Edge, position: int, seqs: dict[bytes, int] | None) -> None:
        self.edge = edge
        self.position = position
        """The version it hands out next (or the first the stream holds after it)."""
        self.seqs = seqs
        self.arrived: list[tuple[int, bytes]] = []
        self.at = 0  # arrived[at] is the next to hand out
        self.ready = asyncio.Event()
        self.sub: Any = None
        self.routed: Any = None  # what the edge's wire routes (for unroute): nats-py's Subscription under ``sub``
        self.closed = False
        self.kept: Readers | None = None
        """The cache it waits in between two pages (None while a page reads from it)."""
        self.kept_bytes = 0  # what arrived while it waited there

    @classmethod
    async def start(cls, edge: Edge, start: int) -> Reader:
        first, seqs = start, None
        if start <= edge.seq_base:  # older than the edge remembers: count again from a checkpoint
            first, seqs = await counting_start(edge, start)
        reader = cls(edge, start, seqs)
        reader.sub = await open_reader(edge.js, edge.subject, first, reader._collect)  # before ``start`` when counting
        reader.routed = edge.wire.ordered(reader.sub, reader._take)
        return reader

    def _take(self, version: int, data: bytes) -> None:
        self.arrived.append((version, data))
        self.ready.set()
        kept = self.kept
        if kept is not None:
            self.kept_bytes += len(data)
            if self.kept_bytes > HELD_BYTES:
                kept.drop(self)

    async def _collect(self, msg: Any) -> None:
        self._take(layout.stream_sequence(msg.reply), msg.data)

    async def next(self, end: int) -> tuple[int, int, bytes, bytes] | None:
        """The next event at or below ``end``, or None once there is none (the next the stream
        holds is above ``end``: kept for a later call).

        Raises:
            asyncio.TimeoutError: nothing came within ACK_TIMEOUT.
        """
        edge = self.edge
        while self.position <= end:
            if self.at == len(self.arrived):
                self.arrived.clear()
                self.at = 0
                self.ready.clear()
                await asyncio.wait_for(self.ready.wait(), ACK_TIMEOUT)
            version, data = self.arrived[self.at]
            if version > end:
                return None
            self.at += 1
            n = data[0]
            topic = data[1 : 1 + n]
            seqs = self.seqs
            if seqs is not None:
                seq = seqs.get(topic, 0) + 1
                seqs[topic] = seq
            elif version > edge.seq_base:
                seq = edge.seq_of[version - edge.seq_base - 1]
            else:  # the edge forgot the oldest sequences while this reader was behind them
                raise RuntimeError(f"the edge no longer remembers the topic sequences at version {version}"
                                   " (it keeps the newest 4-8 million): ask for this page again")
            if version >= self.position:
                self.position = version + 1
                return version, seq, topic, data[1 + n :]
        return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.edge.wire.unroute(self.routed)
        try:
            await self.sub.unsubscribe()
        except Exception as e:  # the connection is gone: so is the consumer
            log.debug("closing a replay's consumer: %s", e)


class Readers:
    """The consumers pages of a replay left open, by the version each hands out next (a page asks
    from where the last one ended); each taken whole by the next page, so never shared, and
    closed after READER_IDLE seconds unused, past HELD_BYTES received meanwhile, or as the
    MAX_READERS-th least recently kept."""

    def __init__(self) -> None:
        self.open: dict[int, Reader] = {}

    def take(self, position: int) -> Reader | None:
        reader = self.open.pop(position, None)
        if reader is None:
            return None
        reader.kept = None
        if reader.seqs is None and reader.position <= reader.edge.seq_base:
            # counting with the edge's own record, which has since forgotten where it stands
            asyncio.get_running_loop().create_task(reader.close())
            return None
        return reader

    def keep(self, reader: Reader) -> None:
        """Keep ``reader`` for the next page."""
        replaced = self.open.pop(reader.position, None)
        if replaced is not None:
            self.drop(replaced)
        reader.kept, reader.kept_bytes = self, 0
        self.open[reader.position] = reader
        loop = asyncio.get_running_loop()
        loop.call_later(READER_IDLE, self._expire, reader, reader.position)
        while len(self.open) > MAX_READERS:
            self.drop(next(iter(self.open.values())))

    def _expire(self, reader: Reader, position: int) -> None:
        if reader.kept is self and reader.position == position:  # still waiting since it was kept
            self.drop(reader)

    def drop(self, reader: Reader) -> None:
        if self.open.get(reader.position) is reader:
            del self.open[reader.position]
        reader.kept = None
        asyncio.get_running_loop().create_task(reader.close())

    async def close(self) -> None:
        readers, self.open = list(self.open.values()), {}
        for reader in readers:
            reader.kept = None
            await reader.close()


async def counting_start(edge: Edge, start: int) -> tuple[int, dict[bytes, int]]:
    """Where to count topic sequences from for a read from ``start``: (first version to read, every
    topic's sequence before it).

    Forward from the newest checkpoint before ``start`` while the stream still holds every event
    after it; else, where the stream's limits removed some of those, backward from the oldest
    checkpoint at or after ``start - 1`` (its sequences less what the stream holds between)."""
    at, seqs = await edge.checkpoint(at_most=start - 1)
    kept = (await edge.js.stream_info(edge.config.stream)).state.first_seq
    if at + 1 >= kept:
        return at + 1, seqs
    start = max(start, kept)
    later = await edge.checkpoint_at_least(start - 1)
    if later is None:
        log.warning("replay from %d: no checkpoint from which to count its topic sequences exactly"
                    " (the stream's limits removed the events after the one before it)", start)
        return kept, seqs
    at, seqs = later
    if at >= start:
        async for _version, data in messages(edge, start, at):
            topic = data[1 : 1 + data[0]]
            seqs[topic] -= 1
    return start, seqs


async def messages(edge: Edge, start: int, end: int) -> AsyncIterator[tuple[int, bytes]]:
    """(version, stream message) of the stream's events ``start..end`` that it holds, in order.

    The consumer's messages come from the connection's wire (nats-py's callback only for those it
    leaves to nats-py) and are only appended to a list, taken here in batches: a ``next_msg`` per
    event costs a future and a wake-up each."""
    arrived: list[tuple[int, bytes]] = []
    ready = asyncio.Event()

    def take(version: int, data: bytes) -> None:
        arrived.append((version, data))
        ready.set()

    async def collect(msg: Any) -> None:
        take(layout.stream_sequence(msg.reply), msg.data)

    sub = await open_reader(edge.js, edge.subject, start, collect)
    routed = edge.wire.ordered(sub, take)
    try:
        while True:
            if not arrived:
                ready.clear()
                await asyncio.wait_for(ready.wait(), ACK_TIMEOUT)
            batch = arrived[:]
            del arrived[:]
            for version, data in batch:
                if version > end:
                    return
                yield version, data
                if version >= end:
                    return
    finally:
        edge.wire.unroute(routed)
        await sub.unsubscribe()


async def open_reader(js: Any, subject: str, first: int, cb: Callable[[Any], Any]) -> Any:
    """An ordered consumer from ``first``; creating one is retried for a while, since JetStream
    answers 503 while the stream or the cluster's meta group elects a leader."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import ServiceUnavailableError

    delay, deadline = RETRY_FIRST, time.monotonic() + READER_PATIENCE
    while True:
        try:
            return await js.subscribe(
                subject, cb=cb, ordered_consumer=True, idle_heartbeat=layout.HEARTBEAT,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first),
                pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30,
            )
        except (ServiceUnavailableError, NoRespondersError, NatsTimeout, asyncio.TimeoutError):
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


def event_filter(request: dict[str, Any]) -> Callable[[bytes, bytes], bool]:
    """The replay/tail filters (patterns, session_id, source, ts_from, ts_until) as one predicate."""
    patterns = request.get("patterns") or []
    if not isinstance(patterns, list):
        raise ValueError("patterns: expected a list")
    topic_ok = compile_matcher(patterns)
    session_id, ts_from, ts_until = request.get("session_id"), request.get("ts_from"), request.get("ts_until")
    source = request.get("source")
    if session_id is None and source is None and ts_from is None and ts_until is None:
        return lambda topic, body: topic_ok(topic)

    def matches(topic: bytes, body: bytes) -> bool:
        if not topic_ok(topic):
            return False
        try:
            ts, src, sid = decode_header(body)
        except Exception:
            return False
        return ((session_id is None or sid == session_id) and (source is None or src == source)
                and (ts_from is None or ts >= ts_from) and (ts_until is None or ts < ts_until))

    return matches
