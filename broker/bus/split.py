"""Delivering within a bounded message size (schemas/fragments.py): with a byte budget per
subscriber, no message the broker sends carries more than ``limit`` bytes of stamp and body. A run
longer than that is split between its events into runs that fit; an event that alone does not fit
goes as fragments. The hot loop sends everything else itself; only a batch or a long event comes
here."""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, repeat
from operator import add
from typing import Any

import zmq

from schemas.envelope import STAMP, run_stamp
from schemas.fragments import FRAGMENT, fragment_stamps

_SNDMORE = int(zmq.SNDMORE)
_send = zmq.backend.Socket.send
_HEAD = STAMP.size
_LENGTH = 4


class Splitter:
    """Sends runs and events longer than ``limit`` bytes of stamp and body (0: no limit, nothing
    is split) as messages that fit; counts them in ``sent``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.longest_alone = limit - _HEAD if limit else 1 << 62
        """The longest body that goes whole as a single event."""
        self.sent = 0
        """Messages sent for runs and events that were longer than ``limit``."""

    def fits(self, sizes: list[int]) -> bool:
        """Do the events of a run of these sizes fit in one message?"""
        return not self.limit or _HEAD + _LENGTH * len(sizes) + sum(sizes) <= self.limit

    def needs(self, sizes: list[int]) -> bool:
        """Must the events of a run (or one event) of these sizes go through :meth:`send`?"""
        return sizes[0] > self.longest_alone if len(sizes) == 1 else not self.fits(sizes)

    def send(
        self, xpub: zmq.Socket, topic: bytes, pad: bytes, version: int, seq: int, bodies: list[Any], sizes: list[int]
    ) -> None:
        """Send the events of one run (``bodies`` one per event, or a batch's single frame holding
        them all) as runs that fit and fragments, in order, each stamp after ``pad``."""
        limit = self.limit
        batch = _view(bodies[0]) if len(bodies) != len(sizes) else None
        # ends[i]: the bytes of the first i events with a length each, to find where a run must end
        ends = list(accumulate(map(add, sizes, repeat(_LENGTH)), initial=0))
        offsets = list(accumulate(sizes, initial=0)) if batch is not None else None
        n, start = len(sizes), 0
        while start < n:
            end = bisect_right(ends, limit - _HEAD + ends[start], start + 1) - 1
            if end <= start:  # one event that fits only without a length, or not at all
                end = start + 1
            if end == start + 1 and sizes[start] > self.longest_alone:
                body = batch[offsets[start] : offsets[end]] if batch is not None else _view(bodies[start])
                self._fragments(xpub, topic, pad, version + start, seq + start, body)
            elif batch is not None:
                self._run(xpub, topic, pad, version + start, seq + start, batch[offsets[start] : offsets[end]],
                          sizes[start:end])
            else:
                group = bodies[start:end]
                self._run(xpub, topic, pad, version + start, seq + start,
                          group[0] if len(group) == 1 else b"".join(group), sizes[start:end])
            start = end

    def _run(self, xpub: zmq.Socket, topic: bytes, pad: bytes, version: int, seq: int, body: Any, sizes: list[int]) -> None:
        _send(xpub, topic, _SNDMORE)
        _send(xpub, pad + (STAMP.pack(version, seq) if len(sizes) == 1 else run_stamp(version, seq, sizes)), _SNDMORE)
        _send(xpub, body, 0)
        self.sent += 1

    def _fragments(self, xpub: zmq.Socket, topic: bytes, pad: bytes, version: int, seq: int, body: memoryview) -> None:
        part = self.limit - FRAGMENT.size
        stamps = fragment_stamps(version, seq, len(body), part)
        for i, stamp in enumerate(stamps):
            _send(xpub, topic, _SNDMORE)
            _send(xpub, pad + stamp, _SNDMORE)
            _send(xpub, body[i * part : (i + 1) * part], 0)
        self.sent += len(stamps)


def _view(body: Any) -> memoryview:
    return body.buffer if isinstance(body, zmq.Frame) else memoryview(body)
