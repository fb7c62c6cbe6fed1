"""A broker's tunables (:class:`BrokerConfig`, set from ``pryxbus broker``'s options) and the limits
that keep its state and untrusted input bounded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.bus.durable import LOG_BUDGET, LOG_BUDGET_EVENTS, MAX_PUBLISHERS
from broker.security import ServerKeys
from schemas.endpoints import Endpoints
from schemas.envelope import (
    DEFAULT_MAX_EVENT_SIZE,
    MAX_BATCH_EVENTS,
    MAX_RUN,
    MAX_RUN_BYTES,
    RESEND_STAMP_PAD,
    RUN_LENGTH,
    SESSION_PREFIX,
    STAMP,
)
from schemas.fragments import FRAGMENT
from schemas.topics import MAX_TYPE_LENGTH

MiB = 1024 * 1024
SUB_BYTES = 640 * MiB
"""Default byte budget of one subscriber's queue at the broker (``--sub-bytes``): 10,027 messages of
up to 65 KiB and a topic (:func:`message_bytes`), about the 10,000 of ``--sub-hwm``, so a burst of small
events fits as it always did, while a stalled subscriber of 1 MiB events holds 640 MiB, not 10 GiB."""
BOUNDED_BYTES = 10 * MiB
"""The byte budget that keeps 20 stalled subscribers, each holding other 1 MiB events, under
256 MiB (operations.md, "Memory"): 587 messages of up to 17,476 bytes, a short queue for bursts."""
MESSAGE_BYTES_MIN = 17 * 1024
"""Shortest bound on a delivered message: a 16 KiB event with its envelope still goes whole."""
MESSAGE_BYTES_MAX = 65 * 1024
"""Longest bound on a delivered message: a run of MAX_RUN events and MAX_RUN_BYTES still goes whole."""
MESSAGES_PER_BUDGET = 600
"""A subscriber's byte budget is cut into about this many messages (within the two bounds above)."""
IN_BYTES = 640 * MiB
"""Default byte budget of one publisher's queue into the broker (``--in-bytes``): 639 messages of up
to ``max_event_size`` (1 MiB), which costs single small events nothing measurable; a smaller one
does (63 messages: ~15% of their rate; operations.md, "Memory")."""
TRIM_DELAY = 0.5
"""Seconds after a peer disconnects before the broker hands freed memory back to the system: libzmq
frees a closed connection's queue when its pipe terminates, shortly after the monitor reports it."""

STREAM_HEAD_MAX = len(SESSION_PREFIX) + 101 + 1
"""Longest head of a session stream's topic: the prefix, a session key (at most ``=`` and 100 bytes)
and its NUL (PROTOCOL.md §5.1)."""

SUBSCRIPTION_MAX_SIZE = 1 + MAX_TYPE_LENGTH
"""Largest subscription message (``\x01`` + prefix): a longer one disconnects its subscriber."""
CURVE_SLACK = 256
"""Bytes the subscription limit allows beyond that under CURVE (encryption, the handshake)."""
CONTROL_MAX_SIZE = 65536
"""Largest control request in bytes (MAXMSGSIZE of the control socket)."""
CONTROL_UNPACK_LIMITS = {
    "max_str_len": CONTROL_MAX_SIZE,
    "max_bin_len": CONTROL_MAX_SIZE,
    "max_array_len": 1024,
    "max_map_len": 1024,
}
"""msgpack limits for decoding a control request (untrusted input stays bounded)."""
MAX_TOPICS = 1_000_000
"""Event types a broker keeps a sequence for (``--max-topics``); each costs it ~90 bytes."""
STATS_TOPICS = 1000
"""Types listed in a ``stats`` reply (the busiest): building a reply of a million stalls the loop ~0.7 s."""
SEQS_PAGE = 10_000
"""Topics listed in one ``seqs`` reply; a subscription matching more pages through them (``after``)."""
SEQS_CACHED = 64
"""Pattern sets whose matching topics the broker remembers between ``seqs`` requests."""
TOPIC_WARNING_INTERVAL = 60.0
"""Seconds between warnings while events of new types are refused."""


@dataclass(frozen=True)
class BrokerConfig:
    """Tunables of one broker; all sizes in events or bytes, times in seconds."""

    endpoints: Endpoints
    sub_hwm: int = 10_000
    """Per-subscriber queue at the broker: a subscriber this far behind starts losing events."""
    in_hwm: int = 10_000
    """Per-publisher queue into the broker: a publisher this far ahead blocks (never drops)."""
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    first_version: int = 1
    """Version of the next event: 1 for a new bus, last logged + 1 after a restart."""
    log_hwm: int = 1_000_000
    """Queue of the event log's connection (on ``endpoints.log_feed``): bursts wait, never drop."""
    home: Path | None = None
    """Where the reserved-version mark lives (broker/bus/reservation.py); None keeps no mark."""
    lifecycle_events: bool = False
    """Publish ``bus:started`` and ``bus:{publisher,subscriber}_{connected,disconnected}`` (opt-in)."""
    max_run: int = MAX_RUN
    """Most events of one topic sent as one message (a run, PROTOCOL.md); 1 sends every event alone."""
    await_log: float = 0.0
    """Seconds a (re)started broker keeps publishers waiting for the event log to subscribe (its
    ``LOG_MARK`` subscription), so the log misses nothing subscribers get; 0 opens at once. The
    same wait starts whenever the log's subscription goes away (it crashed, or is restarting)."""
    curve: ServerKeys | None = None
    """CURVE keys (``--curve``): every bound socket is a CURVE server behind a ZAP allow-list."""
    max_topics: int = MAX_TOPICS
    """Event types with a sequence; an event of a new type beyond this many is refused (counted)."""
    sub_bytes: int = SUB_BYTES
    """Bytes queued per subscriber at the broker: caps ``sub_hwm`` at this many largest messages
    (:meth:`largest_out`); 0 leaves ``sub_hwm`` alone."""
    in_bytes: int = IN_BYTES
    """Bytes queued per publisher into the broker: caps ``in_hwm`` at this many largest messages
    (:meth:`largest_in`); 0 leaves ``in_hwm`` alone."""

    log_budget: int = LOG_BUDGET
    """Bytes of stamped events kept until the event log acks them (``--log-budget``): when full,
    the broker reads no publisher until the log catches up."""
    log_budget_events: int = LOG_BUDGET_EVENTS
    """The same bound in events (never above ``log_hwm``, so the log's queue cannot overflow)."""
    max_publishers: int = MAX_PUBLISHERS
    """Publisher ids whose highest number is remembered for dedup (least recently seen forgotten)."""

    def largest_in(self) -> int:
        """Largest message a publisher may send: an event, its topic, and headroom (the broker
        disconnects a publisher that sends more)."""
        return self.max_event_size + MAX_TYPE_LENGTH + 64

    def message_bytes(self) -> int:
        """The most bytes of stamp and body in one message the broker delivers (0: no bound)."""
        return message_bytes(self.sub_bytes)

    def largest_out(self) -> int:
        """Largest message the broker sends a subscriber, topic included: within a byte budget, a
        bounded message (:meth:`message_bytes`) under the longest topic, a session stream's (and its
        stamp's pad); without, an event alone, a run (bodies up to MAX_RUN_BYTES) or a batch (up to
        MAX_BATCH_EVENTS lengths, bodies up to the event size limit)."""
        bound = self.message_bytes()
        if bound:
            return STREAM_HEAD_MAX + MAX_TYPE_LENGTH + len(RESEND_STAMP_PAD) + bound
        runs = max(1, self.max_run) > 1
        body = max(self.max_event_size, MAX_RUN_BYTES if runs else 0)
        stamp = STAMP.size + RUN_LENGTH.size * max(self.max_run if runs else 0, MAX_BATCH_EVENTS)
        return MAX_TYPE_LENGTH + stamp + body

    def log_queue(self) -> int:
        """The event log's queue at the broker (0: none): ``log_hwm`` messages, and room for what
        bounding messages adds to them. The broker keeps at most ``log_hwm`` events and
        ``log_budget`` bytes (and the run that passed it) for a log that does not ack; each event
        went as one message, but within a bound a long one goes as fragments, and a long batch as
        several runs, at most one message more per ``message_bytes - FRAGMENT.size`` bytes."""
        bound = self.message_bytes()
        if not bound or self.log_hwm <= 0:
            return self.log_hwm
        extra = -(-(self.log_budget + self.largest_in()) // (bound - FRAGMENT.size))
        return min(self.log_hwm + extra, 2**31 - 1)

    def sub_queue(self) -> int:
        """The high-water mark each subscriber's queue at the broker gets (libzmq counts messages)."""
        return queue_limit(self.sub_hwm, self.sub_bytes, self.largest_out())

    def in_queue(self) -> int:
        """The high-water mark each publisher's queue into the broker gets."""
        return queue_limit(self.in_hwm, self.in_bytes, self.largest_in())


def message_bytes(sub_bytes: int) -> int:
    """The bound on a delivered message's stamp and body for a subscriber budget (0: none)."""
    if not sub_bytes:
        return 0
    return min(max(sub_bytes // MESSAGES_PER_BUDGET, MESSAGE_BYTES_MIN), MESSAGE_BYTES_MAX)


def queue_limit(messages: int, budget: int, largest: int) -> int:
    """A libzmq high-water mark (0: none) that holds at most ``messages`` messages and, with a
    ``budget`` (0: none), at most ``budget`` bytes of messages of up to ``largest`` bytes (at least 1:
    a queue of 0 is unbounded to libzmq)."""
    if not budget:
        return messages
    by_bytes = max(1, budget // largest)
    return by_bytes if messages == 0 else min(messages, by_bytes)
