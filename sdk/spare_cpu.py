"""Whether the machine has a CPU to spare: the session service busy-polls for the next request only
then (``--spin-us``), and so does the SDK waiting for the broker's confirmation (``Bus(spin=)``).

Busy-polling spares the wait the wake-up of a sleeping thread on a virtual CPU that halts when
idle, but it only pays while a CPU would otherwise sit idle: beside a busy bus it takes a CPU from
the broker and from the very process it waits for (the measurements are in docs/performance.md,
"The session service's spin" and "Confirmation latency").

So both ask :class:`SpareCpu` first. It reads the machine's busy time from ``/proc/stat``
(ticks of 1/100 s) once per window, takes away what this process used (its own spinning must not
count as someone else's work), and calls a CPU spare while the rest of the machine left at least
``need`` CPUs unused in the last window (``SPARE`` for the service, ``WAIT_SPARE`` for the SDK). Without ``/proc/stat`` (not Linux) nothing is spare.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

DEFAULT_SPIN = 0.001
"""Seconds the service busy-polls for the next request (``--spin-us``; ServiceConfig.spin)."""
WINDOW = 0.2
"""Seconds between two looks at ``/proc/stat`` (20 ticks per CPU: the share is known to ~5%)."""
FIRST_LOOK = 0.05
"""Seconds after its start a meter answers for the first time (nothing is spare until then): a
rougher share (~20%), so that a short-lived process does not go without for a whole window."""
SPARE = 1.5
"""CPUs the other processes must have left unused in the last window for a spin to be allowed: one
for the spin, half of one for the others' bursts (at 1.0, spinning beside four busy clients slowed
them; docs/performance.md)."""
WAIT_SPARE = 1.0
"""The same for the SDK's wait for a confirmation: one CPU, for the spin. The wait is its own
limit: the work it waits for runs elsewhere, and it ends when the confirmation comes."""


class SpareCpu:
    """``spare(now)``: whether the other processes left ``need`` CPUs unused in the last window."""

    def __init__(self, window: float = WINDOW, *, stat_path: str = "/proc/stat", need: float = SPARE) -> None:
        self.window = window
        self.need = need
        self.cpus = os.cpu_count() or 1
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        try:
            self._fd: int | None = os.open(stat_path, os.O_RDONLY)
        except OSError:
            self._fd = None
        self._spare = False
        self._due = min(window, FIRST_LOOK)  # the first look comes sooner
        self._at = time.perf_counter()
        self._busy, self._own = self.sample()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def spare(self, now: float) -> bool:
        """Whether a CPU is spare (re-read at most once per window; ``now`` is ``perf_counter()``)."""
        if now - self._at >= self._due:
            self._due = self.window
            busy, own = self.sample()
            if busy is not None and self._busy is not None:
                others = (busy - self._busy) - (own - self._own)  # CPU-seconds
                self._spare = self.cpus - others / (now - self._at) >= self.need
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


_shared: SpareCpu | None = None
_shared_lock = threading.Lock()


def _forked() -> None:
    """In a child process: a lock another thread of the parent held would never be released."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def cpu_spare(now: float) -> bool:
    """Whether a CPU is spare, by one meter for the whole process (one ``/proc/stat`` open however
    many buses ask, from whichever threads); ``now`` is ``perf_counter()``."""
    with _shared_lock:
        return _meter().spare(now)


def start_meter() -> None:
    """Start the process's meter now (a bus that may spin, as it connects), so that it has looked
    by the time the first wait asks."""
    with _shared_lock:
        _meter()


def _meter() -> SpareCpu:
    global _shared
    if _shared is None:
        _shared = SpareCpu(need=WAIT_SPARE)
    return _shared


CONFIRM_SPIN = 0.001
"""Seconds a wait for the broker's confirmation busy-polls before it sleeps (``Bus(spin=)``)."""
YIELD_AFTER = 0.00025
"""Seconds into that spin after which each look yields the CPU first: the thread that carries the
confirmation in (libzmq's I/O thread) may be waiting for this very CPU."""


def spin_looks(spin: float, timeout: float) -> Iterator[None]:
    """The looks of a wait of ``timeout`` seconds for a confirmation that busy-polls: one each
    time round until ``spin`` (at most ``timeout``) has passed, the CPU yielded before each past
    YIELD_AFTER; none if it should not spin (``spin`` 0, or no CPU to spare).

    A confirmation comes within a round trip through the broker (and the event log): busy-polling
    for it spares the wake-up of a sleeping thread, which on a virtual CPU that halts when idle
    costs about as much as the round trip itself."""
    if spin <= 0:
        return
    start = time.perf_counter()
    if not cpu_spare(start):
        return
    deadline, polite = start + min(spin, timeout), start + YIELD_AFTER
    while (now := time.perf_counter()) < deadline:
        if now > polite:
            os.sched_yield()
        yield
