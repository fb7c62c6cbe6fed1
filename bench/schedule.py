"""An open-loop send schedule: when each message *should* be sent, so latency counts from then.

Coordinated omission: a sender that waits for the system before sending the next message sends
less while the system stalls, and the stall disappears from the figures. Here message ``i`` is due
at ``start + i / rate`` whatever happened before; it carries that due time, and the receiver
measures its latency from the due time, not from when the sender got round to it. A sender that
falls behind sends everything overdue at once (each message still stamped with its own due time).

Times are ``time.monotonic_ns()``: CLOCK_MONOTONIC is one clock for every process on the machine,
so a due time stamped in one process can be compared with a receive time in another.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator

STAMP = struct.Struct("!qq")
"""Latency payload header: (due time in ns, message index); the payload is padded after it."""


def stamped_payload(due_ns: int, index: int, size: int) -> bytes:
    """A payload of ``size`` bytes (at least the 16-byte header) that carries its due time."""
    head = STAMP.pack(due_ns, index)
    return head + b"\x00" * max(0, size - len(head))


def read_stamp(payload: bytes) -> tuple[int, int]:
    """``(due_ns, index)`` from a payload made by :func:`stamped_payload`."""
    return STAMP.unpack_from(payload)


class Schedule:
    """``count`` messages at ``rate`` per second from ``start_ns`` (default: now + ``lead``).

    A ``rate`` of 0 means as fast as possible: every message is due at the start.
    """

    def __init__(
        self,
        rate: float,
        count: int,
        *,
        start_ns: int | None = None,
        lead: float = 0.0,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if rate < 0 or count < 0:
            raise ValueError(f"rate and count must be >= 0, got {rate}, {count}")
        self.rate = rate
        self.count = count
        self.clock = clock
        self.start_ns = clock() + int(lead * 1e9) if start_ns is None else start_ns
        self.interval_ns = 1e9 / rate if rate else 0.0

    def due(self, index: int) -> int:
        """When message ``index`` is due, in ns on the monotonic clock."""
        return self.start_ns + int(index * self.interval_ns)

    @property
    def end_ns(self) -> int:
        """When the last message is due."""
        return self.due(max(0, self.count - 1))

    def overdue(self, next_index: int, now_ns: int) -> int:
        """How many messages from ``next_index`` on are due at ``now_ns`` (what to send now)."""
        if next_index >= self.count:
            return 0
        if not self.interval_ns:
            return self.count - next_index
        if now_ns < self.start_ns:
            return 0
        due_by_now = int((now_ns - self.start_ns) // self.interval_ns) + 1
        return max(0, min(self.count, due_by_now) - next_index)

    def batches(self, sleep: Callable[[float], None] = time.sleep) -> Iterator[tuple[int, int]]:
        """Yield ``(index, due_ns)`` for every message in order, sleeping until each is due.

        Several overdue messages are yielded back to back without sleeping (open loop: a late
        sender catches up, it does not skip or re-time anything).
        """
        index = 0
        while index < self.count:
            now = self.clock()
            n = self.overdue(index, now)
            if n == 0:
                sleep(max(0.0, (self.due(index) - now) / 1e9))  # sync-ok: waiting for a due time
                continue
            for i in range(index, index + n):
                yield i, self.due(i)
            index += n
