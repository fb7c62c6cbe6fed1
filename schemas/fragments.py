"""Messages of a bounded size: with a byte budget per subscriber, the broker cuts what it delivers
into messages of a bounded size (PROTOCOL.md §5.2; broker/bus/split.py), so that its queues, which
libzmq counts in messages, also hold a known number of bytes.

A run longer than that goes as several runs, split between events. A single event longer than that
goes as *fragments*, consecutive messages on its topic::

    [0] topic  as the event's
    [1] stamp  FRAGMENT = struct "!QQQII": (0, version, topic_seq, index, count)
    [2] part   the next bytes of the body (every part but the last of one length)

The leading 0 makes every decoder that does not know fragments skip them (a stamp whose version
reads 0 is never an event), so it sees the event as lost, exactly, by its topic sequence. A
:class:`Fragments` puts them back together; it gives up an event whose fragments do not arrive
one after the other, complete and in order (the queue that dropped one shows as a loss).
"""

from __future__ import annotations

import struct

from schemas.envelope import CONTROL_PREFIX, STAMP

FRAGMENT = struct.Struct("!QQQII")
"""A fragment's stamp: 0 (no event), the event's version and topic_seq, this fragment's index from
0 and how many there are."""

ZERO_VERSION = bytes(8)

_unpack = FRAGMENT.unpack


def is_fragment(topic: bytes, stamp: bytes) -> bool:
    """Is this delivered message (a session stream's already unwrapped) a fragment?"""
    return len(stamp) == FRAGMENT.size and stamp[:8] == ZERO_VERSION and topic[:1] != CONTROL_PREFIX


def fragment_stamps(version: int, topic_seq: int, size: int, part: int) -> list[bytes]:
    """The stamps of the fragments of one event of ``size`` body bytes, ``part`` bytes each but the
    last, in order (part i is the body's bytes from i * part)."""
    count = -(-size // part)
    return [FRAGMENT.pack(0, version, topic_seq, i, count) for i in range(count)]


class Fragments:
    """Puts one connection's fragments back together; at most one event is in progress."""

    __slots__ = ("_topic", "_version", "_next", "_count", "_parts")

    def __init__(self) -> None:
        self._topic = b""
        self._version = self._next = self._count = 0
        self._parts: list[bytes] = []

    def take(self, topic: bytes, stamp: bytes, part: bytes) -> tuple[bytes, bytes, bytes] | None:
        """Take one fragment; return the whole event as an ordinary message (topic, stamp, body)
        once its last fragment is in, else None."""
        _, version, topic_seq, index, count = _unpack(stamp)
        if index == 0:  # an event begun before and not finished is given up
            self._topic, self._version, self._next, self._count = topic, version, 0, count
            self._parts = []
        elif not (index == self._next and version == self._version and topic == self._topic and self._parts):
            self._parts = []
            return None  # a fragment of an event whose beginning was lost
        self._parts.append(part)
        self._next = index + 1
        if self._next < self._count:
            return None
        body = b"".join(self._parts)
        self._parts = []
        return topic, STAMP.pack(version, topic_seq), body
