"""Reading the event log: replay pages, the ``since=`` seam, and the ``recover`` policy's decoder.

The event log answers ``replay`` requests in pages of ``[version, topic_seq, type, body]`` rows
(``schemas/PROTOCOL.md``). Everything here is page iteration over :class:`sdk.request.Requester`
plus two decoders a :class:`sdk.subscription.Subscription` can use:

- the seam (``subscribe(since=V)``): subscribe first, ask the broker for its current version B,
  replay ``(V, B]`` from the log (waiting until the log has reached B), then deliver live events
  above B only. Every event above B is live (stamped after the subscription was confirmed), every
  event up to B is in the replay: no gap, no duplicate.
- ``policy="recover"``: subscribe to every event (so each version gap is seen at once), and on a
  gap fetch the missing versions from the log, delivering them in version order before the event
  that revealed the gap.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from schemas.envelope import ENVELOPE_VERSION, STAMP
from sdk.errors import BusTimeout, BusUnavailable, SlowSubscriberError
from sdk.event import Event
from sdk.request import Requester
from sdk.subscription import EventDecoder

if TYPE_CHECKING:
    from sdk.bus import Bus
    from sdk.subscription import Subscription

PAGE = 5_000
_WAIT = 0.005  # between two looks at a log that has not yet reached the version we need
_unpackb = msgpack.unpackb
_unpack_stamp = STAMP.unpack


def decode_row(row: list[Any]) -> Event:
    """An Event from one log row ``[version, topic_seq, type, body]``."""
    version, seq, event_type, body = row
    _, ts, source, session_id, payload = _unpackb(body, raw=False, strict_map_key=False)
    return Event(event_type, payload, version, ts, source, session_id, seq)


def log_client(ctx: zmq.Context, endpoint: str, *, timeout: float) -> Requester:
    """A Lazy Pirate client for the event log (every log request is a read, or idempotent)."""
    if not endpoint:
        raise BusUnavailable("this stack has no event log endpoint")
    return Requester(ctx, endpoint, timeout=timeout, retries=2, what="event log")


def iter_rows(
    log: Requester,
    *,
    patterns: tuple[str, ...] = (),
    since: int = 0,
    until: int | None = None,
    session_id: str | None = None,
    ts_from: float | None = None,
    ts_until: float | None = None,
    wait: bool = False,
    timeout: float = 5.0,
    page: int = PAGE,
) -> Iterator[list[Any]]:
    """Raw log rows with ``since < version <= until`` matching the filters, in version order.

    With ``wait`` (and an ``until``), keep asking until the log has written up to ``until``.

    Raises:
        BusTimeout: ``wait`` and the log did not reach ``until`` within ``timeout``.
        BusUnavailable: the event log did not answer.
    """
    request: dict[str, Any] = {"op": "replay", "since": since, "limit": page}
    if patterns:
        request["patterns"] = list(patterns)
    for key, value in (("until", until), ("session_id", session_id), ("ts_from", ts_from), ("ts_until", ts_until)):
        if value is not None:
            request[key] = value
    deadline = time.monotonic() + timeout
    while True:
        result = log.call(request)
        yield from result["events"]
        if result["done"]:
            return
        request["since"] = result["next"]
        if result["events"] or not result.get("exhausted", True):
            continue
        # The scan reached the end of what the log holds, short of ``until``.
        if not wait:
            return
        if time.monotonic() >= deadline:
            raise BusTimeout(
                f"the event log reached version {result['last']}, not {until}, within {timeout:g}s"
            )
        time.sleep(_WAIT)  # sync-ok: polling the log's progress, bounded by the deadline


def replay(log: Requester, **options: Any) -> Iterator[Event]:
    """Events from :func:`iter_rows` (same options), decoded."""
    for row in iter_rows(log, **options):
        yield decode_row(row)


# -- the since= seam -------------------------------------------------------------------------


class FloorDecoder(EventDecoder):
    """An EventDecoder that drops live events at or below ``floor`` (they came from the log)."""

    floor = 0

    feed = EventDecoder.feed_each

    def decode(self, topic: bytes, stamp: bytes, body: bytes) -> Event | None:
        event = EventDecoder.decode(self, topic, stamp, body)
        if event is not None and event.version <= self.floor:
            self.received -= 1
            return None
        return event


def broker_position(bus: Bus) -> tuple[int, bool]:
    """The broker's current version, and whether it stamped anything since it started."""
    info = bus.control.call({"op": "ping"})
    version = int(info["version"])
    first = int(info.get("first_version", 1))
    return version, version >= first


def attach_history(sub: Subscription, bus: Bus, since: int, *, timeout: float) -> None:
    """Put every logged event after ``since`` in front of a live subscription (the seam).

    Raises:
        BusUnavailable: the broker or the event log did not answer.
        BusTimeout: the log did not catch up with the broker within ``timeout``.
    """
    target, stamped = broker_position(bus)
    floor = max(since, target)
    history: list[Event] = []
    if since < target:
        history = list(
            replay(bus.log, patterns=sub.patterns, since=since, until=target, wait=stamped, timeout=timeout)
        )
    decoder = sub._decoder
    if isinstance(decoder, RecoveringDecoder):
        decoder.last_version = floor
    else:
        seam = FloorDecoder.__new__(FloorDecoder)
        seam.__dict__.update(decoder.__dict__)
        seam.floor = floor
        sub._decoder = seam
    live = [e for e in sub._pending if e.version > floor]
    sub._pending.clear()
    sub._pending.extend(history)
    sub._pending.extend(live)


# -- policy="recover" ------------------------------------------------------------------------


class RecoveringDecoder(EventDecoder):
    """Decoder of a ``policy="recover"`` subscription: fills version gaps from the event log.

    It subscribes to every event (``prefixes = [b""]``) because versions are contiguous only over
    the whole stream; filtering by pattern happens here. Recovered events go to ``pending`` (the
    subscription's queue), in version order, ahead of the event that revealed the gap.
    """

    def __init__(
        self,
        patterns: tuple[str, ...],
        fetch: Callable[[int, int], list[Event]],
        pending: deque[Event],
        position: Callable[[], tuple[int, bool]] | None = None,
    ) -> None:
        super().__init__(patterns, "count")
        self.policy = "recover"  # type: ignore[assignment]
        self.prefixes = [b""]
        self.fetch = fetch
        self.pending = pending
        self.position = position
        self.last_version: int | None = None
        self.recovered = 0

    feed = EventDecoder.feed_each

    def decode(self, topic: bytes, stamp: bytes, body: bytes) -> Event | None:
        """The next event in version order (recovered ones first), or None.

        Raises:
            SlowSubscriberError: the log could not supply a gap (it lost them too, or is down).
        """
        if len(stamp) != 16:
            self.malformed += 1
            return None
        version, seq = _unpack_stamp(stamp)
        last = self.last_version
        if last is not None and version <= last:
            return None  # already delivered (from the log at the seam)
        recovered: list[Event] = []
        if last is not None and version != last + 1:
            try:  # before any state changes: an asyncio fetch raises here and calls decode again
                recovered = self.fetch(last, version - 1)
            except (BusTimeout, BusUnavailable) as e:
                self.lost += version - last - 1
                raise SlowSubscriberError(version - last - 1, topic.decode("utf-8", "replace")) from e
            self.recovered += len(recovered)
            self.received += len(recovered)
        self.last_version = version
        self.last_seq[topic] = seq
        event = self._event(topic, version, seq, body)
        if not recovered:
            return event
        if event is not None:
            recovered.append(event)
        self.pending.extend(recovered)  # the subscription delivers its queue before reading on
        return None

    def catch_up(self) -> Event | None:
        """Called when the subscription is idle: fetch what the broker stamped after our last event.

        A loss at the very end of a burst shows no gap until the next event arrives; an idle
        subscription asks the broker where it is instead. Live copies of what is fetched here
        arrive later and are dropped as duplicates. Failures are left to the next gap.
        """
        last = self.last_version
        if last is None or self.position is None:
            return None  # nothing received: nothing was queued, so nothing was dropped
        try:
            version, stamped = self.position()
            if not stamped or version <= last:
                return None
            recovered = self.fetch(last, version)
        except (BusTimeout, BusUnavailable):
            return None
        self.last_version = version
        if not recovered:
            return None
        self.recovered += len(recovered)
        self.received += len(recovered)
        self.pending.extend(recovered[1:])
        return recovered[0]

    def _event(self, topic: bytes, version: int, seq: int, body: bytes) -> Event | None:
        if not self.matches(topic):
            return None
        try:
            env, ts, source, session_id, payload = _unpackb(body, raw=False, strict_map_key=False)
            if env != ENVELOPE_VERSION:
                raise ValueError(env)
            event_type = topic.decode("utf-8")
        except Exception:
            self.malformed += 1
            return None
        self.received += 1
        return Event(event_type, payload, version, ts, source, session_id, seq)


def recovering_decoder(sub_patterns: tuple[str, ...], bus: Bus, pending: deque[Event]) -> RecoveringDecoder:
    """A RecoveringDecoder fetching from ``bus.log`` within the bus timeout."""

    def fetch(after: int, through: int) -> list[Event]:
        return list(
            replay(bus.log, patterns=sub_patterns, since=after, until=through, wait=True, timeout=bus.timeout)
        )

    return RecoveringDecoder(sub_patterns, fetch, pending, lambda: broker_position(bus))


def tail(log: Requester, patterns: tuple[str, ...], *, limit: int, session_id: str | None = None) -> list[Event]:
    """The newest ``limit`` logged events matching, oldest first."""
    request: dict[str, Any] = {"op": "tail", "limit": limit, "patterns": list(patterns)}
    if session_id is not None:
        request["session_id"] = session_id
    return [decode_row(row) for row in log.call(request)["events"]]
