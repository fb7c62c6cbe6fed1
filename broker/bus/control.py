"""The broker's control endpoint: its requests (``ping``, ``health``, ``stats``, ``seqs``), each
answered with a reply, garbage included (PROTOCOL.md "Control").

A mixin of :class:`broker.bus.broker.Broker`, kept apart so that the broker's module stays about
its loop; it runs on the broker's thread, once per request, never per event.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import zmq

from broker.bus.config import CONTROL_UNPACK_LIMITS, SEQS_CACHED, SEQS_PAGE, STATS_TOPICS
from schemas.topics import compile_matcher

if TYPE_CHECKING:
    from broker.bus.config import BrokerConfig
    from broker.bus.durable import Durable
    from broker.bus.split import Splitter
    from broker.bus.streams import SessionStreams
    from broker.security import Authenticator
    from schemas.endpoints import Endpoints

_NOBLOCK = int(zmq.NOBLOCK)
_COUNT = itemgetter(1)  # a (topic, count) pair's count


@dataclass(slots=True)
class _Matched:
    """The topics matching one pattern set, in the order the broker first saw them."""

    matches: Callable[[bytes], bool]
    topics: list[bytes] = field(default_factory=list)
    scanned: int = 0
    """How many of the broker's topics (in ``topic_seq``'s order) were already looked at."""


class Control:
    """How the broker answers its control endpoint (a ROUTER: REQ and DEALER clients alike)."""

    config: BrokerConfig
    control: zmq.Socket
    endpoints: Endpoints
    version: int
    topic_seq: dict[bytes, int]
    started: float
    malformed: int
    rejected: int
    topics_refused: int
    syncs: int
    split: Splitter
    lifecycle_events: int
    publishers: int
    subscribers: int
    sub_queue: int
    in_queue: int
    _auth: Authenticator | None
    _durable: Durable
    _closed_until: float | None
    _log_present: bool
    _handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]
    _streams: SessionStreams
    _matched: dict[tuple[str, ...], _Matched]
    """The topics found matching each pattern set of recent ``seqs`` requests."""

    def _handle_control(self) -> None:
        while True:
            try:
                frames = self.control.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            # ROUTER: [identity, (empty delimiter from REQ), request]
            if len(frames) < 2:
                continue
            head, request = frames[:-1], frames[-1]
            reply = self._dispatch(request)
            self.control.send_multipart([*head, msgpack.packb(reply, use_bin_type=True)])

    def _dispatch(self, request: bytes) -> dict[str, Any]:
        try:
            msg = msgpack.unpackb(request, raw=False, **CONTROL_UNPACK_LIMITS)
        except Exception:
            return {"ok": False, "code": "bad_request", "message": "request is not valid msgpack"}
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            return {"ok": False, "code": "bad_request", "message": "request must be a map with an 'op'"}
        handler = self._handlers.get(msg["op"])
        if handler is None:
            return {
                "ok": False,
                "code": "unknown_op",
                "message": f"unknown op {msg['op']!r}; known: {sorted(self._handlers)}",
            }
        try:
            return {"ok": True, "result": handler(msg)}
        except ValueError as e:  # a field of the request is wrong (an invalid pattern, too)
            return {"ok": False, "code": "bad_request", "message": str(e)}

    def _op_ping(self, _msg: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "ok",
            "pid": os.getpid(),
            "version": self.version,
            "first_version": self.config.first_version,
            "max_event_size": self.config.max_event_size,
            "durable": self._durable.durable if self._durable.logging else None,
            "session_streams": True,
        }

    def _op_seqs(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The current sequence of each topic matching ``patterns``, a page of SEQS_PAGE at a time
        (PROTOCOL.md §8): a subscriber compares them with the last it received to see a lost tail.

        Topics are never forgotten during a run, so the topics matching a pattern set are found
        once and the list only grows: a request scans only the topics new since the last one.

        Raises:
            ValueError: the request's fields are not a list of patterns and an index.
        """
        patterns, after = msg.get("patterns", []), msg.get("after", 0)
        if not isinstance(patterns, list) or type(after) is not int or after < 0:
            raise ValueError("seqs takes 'patterns' (a list of patterns) and 'after' (an index >= 0)")
        session_id = msg.get("session_id")
        if session_id is not None:  # a session stream's own sequences (PROTOCOL.md §5.1)
            if not isinstance(session_id, str) or not session_id:
                raise ValueError("seqs: 'session_id' must be a non-empty str")
            return {
                "version": self.version,
                "first_version": self.config.first_version,
                "seqs": self._streams.seqs(session_id, patterns),
                "next": None,
            }
        key = tuple(patterns)
        found = self._matched.pop(key, None)  # put back last: the dict's order is its recency
        if found is None:
            found = _Matched(compile_matcher(patterns))
            if len(self._matched) >= SEQS_CACHED:
                del self._matched[next(iter(self._matched))]
        self._matched[key] = found
        seqs = self.topic_seq
        matches = found.matches
        found.topics.extend(t for t in itertools.islice(seqs, found.scanned, None) if matches(t))
        found.scanned = len(seqs)
        page = found.topics[after:after + SEQS_PAGE]
        end = after + len(page)
        return {
            "version": self.version,
            "first_version": self.config.first_version,
            "seqs": {t.decode(): seqs[t] for t in page},
            "next": end if end < len(found.topics) else None,
        }

    def _op_stats(self, _msg: dict[str, Any]) -> dict[str, Any]:
        first = self.config.first_version
        seqs = self.topic_seq
        listed = seqs.items() if len(seqs) <= STATS_TOPICS else heapq.nlargest(STATS_TOPICS, seqs.items(), key=_COUNT)
        return {
            "pid": os.getpid(),
            "uptime": time.time() - self.started,
            "version": self.version,
            "events_in": self.version - first + 1,
            "events_out": self.version - first + 1,
            "topics": {t.decode(): n for t, n in listed},
            "topic_count": len(seqs),
            "topics_refused": self.topics_refused,
            "malformed": self.malformed,
            "rejected": self.rejected,
            "curve_refused": self._auth.refused if self._auth is not None else 0,
            "syncs": self.syncs,
            "fragmented": self.split.sent,
            "taking_events": self._closed_until is None,
            "lifecycle_events": self.lifecycle_events,
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "durable": self._durable.stats(),
            "session_streams": self._streams.stats(),
            "config": {
                "sub_hwm": self.sub_queue,
                "in_hwm": self.in_queue,
                "sub_bytes": self.config.sub_bytes,
                "message_bytes": self.split.limit,
                "in_bytes": self.config.in_bytes,
                "log_hwm": self.config.log_hwm,
                "max_event_size": self.config.max_event_size,
                "max_topics": self.config.max_topics,
            },
            "endpoints": vars(self.endpoints),
        }
