"""Whether the machine has a CPU to spare: the session service busy-polls only then (``--spin-us``).

Busy-polling for the next request spares a client in a loop the wake-up of a sleeping thread on a
virtual CPU that halts when idle, but it only pays while a CPU would otherwise sit idle: beside a
busy bus it takes a CPU from the broker and from the very client it waits for (the measurements
are in docs/performance.md, "The session service's spin").

So the service asks :class:`SpareCpu` first. It reads the machine's busy time from ``/proc/stat``
(ticks of 1/100 s) once per window, takes away what this process used (its own spinning must not
count as someone else's work), and calls a CPU spare while the rest of the machine left at least
``SPARE`` CPUs unused in the last window. Without ``/proc/stat`` (not Linux) nothing is spare.
"""

from __future__ import annotations

import os
import time

DEFAULT_SPIN = 0.001
"""Seconds the service busy-polls for the next request (``--spin-us``; ServiceConfig.spin)."""
WINDOW = 0.2
"""Seconds between two looks at ``/proc/stat`` (20 ticks per CPU: the share is known to ~5%)."""
SPARE = 1.5
"""CPUs the other processes must have left unused in the last window for a spin to be allowed: one
for the spin, half of one for the others' bursts (at 1.0, spinning beside four busy clients slowed
them; docs/performance.md)."""


class SpareCpu:
    """``spare(now)``: whether the other processes left ``SPARE`` CPUs unused in the last window."""

    def __init__(self, window: float = WINDOW, *, stat_path: str = "/proc/stat") -> None:
        self.window = window
        self.cpus = os.cpu_count() or 1
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        try:
            self._fd: int | None = os.open(stat_path, os.O_RDONLY)
        except OSError:
            self._fd = None
        self._spare = False
        self._at = time.perf_counter()
        self._busy, self._own = self.sample()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def spare(self, now: float) -> bool:
        """Whether a CPU is spare (re-read at most once per window; ``now`` is ``perf_counter()``)."""
        if now - self._at >= self.window:
            busy, own = self.sample()
            if busy is not None and self._busy is not None:
                others = (busy - self._busy) - (own - self._own)  # CPU-seconds
                self._spare = self.cpus - others / (now - self._at) >= SPARE
            self._at, self._busy, self._own = now, busy, own
        return self._spare

    def sample(self) -> tuple[float | None, float]:
        """(CPU-seconds the whole machine was busy, CPU-seconds this process used) so far."""
        own = time.process_time()
        if self._fd is None:
            return None, own
        try:
            line = os.pread(self._fd, 256, 0).split(b"\n", 1)[0]
            # cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest is in user)
            fields = [int(x) for x in line.split()[1:9]]
        except (OSError, ValueError):
            return None, own
        return (sum(fields) - fields[3] - fields[4]) * self._tick, own
