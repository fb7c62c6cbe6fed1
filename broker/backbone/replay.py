"""The event log's ``replay`` and ``tail`` served by an edge from the stream: an ordered consumer
from the first version asked for, each event with the per-topic sequence the edge counted (or
counts again from a checkpoint, for versions older than it remembers)."""

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
        async for version, seq, topic, body in read(edge, since + 1, end):
            cursor = version
            if matches(topic, body):
                rows.append([version, seq, topic.decode(), body])
                if len(rows) == limit:
                    break
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
    seqs: dict[bytes, int] | None = None
    first = start
    if start <= edge.seq_base:  # older than the edge remembers: count again from a checkpoint
        first, seqs = await counting_start(edge, start)
    seq_of, seq_base = edge.seq_of, edge.seq_base
    async for version, data in messages(edge, first, end):
        n = data[0]
        topic = data[1 : 1 + n]
        if seqs is not None:
            seq = seqs.get(topic, 0) + 1
            seqs[topic] = seq
        else:
            seq = seq_of[version - seq_base - 1]
        if version >= start:
            yield version, seq, topic, data[1 + n :]


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
                subject, cb=cb, ordered_consumer=True,
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
