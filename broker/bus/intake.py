"""The broker's reading of what its hot loop does not take itself: a batch's frames and identity
(PROTOCOL.md §4.2), a message with too many frames, an event of a new type past ``max_topics``.

A mixin of :class:`broker.bus.broker.Broker`, kept apart so that the broker's module stays about
its loop; each method runs once per batch or per refused message, never per event of a run.
"""

from __future__ import annotations

import logging
import struct
import time
from itertools import accumulate
from operator import itemgetter
from typing import TYPE_CHECKING

import zmq

from broker.bus.config import TOPIC_WARNING_INTERVAL
from schemas.envelope import BATCH_IDENTITY, BODY_MARK, IDENTIFIED_MARK, IDENTITY_RAW, MAX_BATCH_EVENTS
from schemas.topics import is_valid_type

if TYPE_CHECKING:
    from broker.bus.config import BrokerConfig
    from broker.bus.durable import Durable

log = logging.getLogger("pryxbus.broker")

_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_MARKS = frozenset(BODY_MARK)
_MARKS7 = frozenset(IDENTIFIED_MARK)
_FOUR_UINT64 = (0xCF,) * 4
_IDENTITY_SIZE = IDENTITY_RAW.size
_unpack_identity = IDENTITY_RAW.unpack_from

BatchIdentity = tuple[bytes, int, int]
"""A batch's publisher id (8 raw bytes) and its first and last numbers."""


class Intake:
    """How the broker reads a batch, skips a malformed message, refuses a type past the limit."""

    config: BrokerConfig
    xsub: zmq.Socket
    version: int
    malformed: int
    rejected: int
    topics_refused: int
    _topics_warned_at: float | None
    _durable: Durable

    def _refuse_topic(self, topic: bytes) -> None:
        """Count an event of a new type past ``max_topics``; warn at first and then once a minute."""
        self.topics_refused += 1
        now = time.monotonic()
        if self._topics_warned_at is None or now - self._topics_warned_at >= TOPIC_WARNING_INTERVAL:
            self._topics_warned_at = now
            log.warning(
                "refusing events of new types (%d refused so far, this one %r): the broker already"
                " keeps sequences for %d types (--max-topics)",
                self.topics_refused, topic.decode(errors="replace"), self.config.max_topics,
            )

    def _read_batch(self, topic: bytes) -> tuple[bytes, zmq.Frame, list[int], BatchIdentity | None] | None:
        """The rest of a batch whose topic frame was read: ``(event type, bodies frame, lengths,
        identity)``, or None (counted) if it is not a valid batch (PROTOCOL.md §4.2). The identity
        of a batch of identified bodies is ``(publisher id, first number, last number)``: its
        numbers must be consecutive, and it is stamped whole or not at all."""
        xsub = self.xsub
        if not xsub.getsockopt(_RCVMORE):
            self.malformed += 1
            return None
        lengths_frame = xsub.recv(_NOBLOCK, False)
        if not lengths_frame.more:
            self.malformed += 1
            return None
        body = xsub.recv(_NOBLOCK, False)
        identity_frame = None
        if body.more:
            identity_frame = xsub.recv(_NOBLOCK, False)
            if identity_frame.more:
                self._skip_rest()
                return None
        event_type = topic[1:]
        n, rest = divmod(len(lengths_frame), 4)
        if rest or not 0 < n <= MAX_BATCH_EVENTS:
            self.rejected += max(n, 1)
            return None
        lengths = list(struct.unpack(f"!{n}I", lengths_frame.bytes))
        if sum(lengths) != len(body) or not min(lengths):
            self.rejected += n
            return None
        view = body.buffer
        if n == 1:
            marks = {view[0]}
        else:  # every body's first byte, read in C
            marks = set(itemgetter(*accumulate(lengths[:-1], initial=0))(view))
        identity = None
        if identity_frame is not None:  # the batch's identity once, its bodies anonymous
            if len(identity_frame) != BATCH_IDENTITY.size or marks != _MARKS:
                self.rejected += n
                return None
            pid, first = BATCH_IDENTITY.unpack(identity_frame.bytes)
            if first >> 63 or not first:
                self.rejected += n
                return None
            identity = pid.to_bytes(8, "big"), first, first + n - 1
        elif marks == _MARKS7:
            identity = self._batch_identity(view, lengths)
            if identity is None:
                self.rejected += n
                return None
        elif marks != _MARKS:
            self.rejected += n
            return None
        if not is_valid_type(event_type):
            self.rejected += n
            if identity is not None:
                self._durable.skip(identity[0], identity[1], self.version, identity[2])
            return None
        return event_type, body, lengths, identity

    def _batch_identity(self, view: memoryview, lengths: list[int]) -> BatchIdentity | None:
        """A batch of identified bodies: ``(publisher id, first number, last number)`` from its
        first and last body, or None if those are not one publisher's consecutive numbers."""
        if min(lengths) <= _IDENTITY_SIZE:
            return None
        m1, pid, m2, first = _unpack_identity(view, lengths[0] - _IDENTITY_SIZE)
        m3, last_pid, m4, last = _unpack_identity(view, len(view) - _IDENTITY_SIZE)
        if (m1, m2, m3, m4) != _FOUR_UINT64 or pid != last_pid or last - first != len(lengths) - 1 or last >> 63:
            return None
        return pid, first, last

    def _skip_rest(self) -> None:
        """Drain the remaining frames of a message with too many frames, and count it once."""
        self.malformed += 1
        while self.xsub.recv(_NOBLOCK, False).more:
            pass
