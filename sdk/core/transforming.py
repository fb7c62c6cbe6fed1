"""The socket-free core of a transform, shared by :class:`sdk.transform.Transform` (sync) and
:class:`sdk.aio_transform.AsyncTransform` (asyncio): what a mapper's result means, where a
restarted transform resumes (:func:`progress`, a flow), which outputs a resume skips, how each
output becomes an event to publish, and the counters. Each front only subscribes, receives and
publishes with its own I/O."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from schemas.topics import compile_matcher
from sdk.core.decoding import event_of_row
from sdk.core.flows import PING, Ask, Flow, Sleep
from sdk.core.publishing import NUMBER_BASE
from sdk.errors import BusError, BusTimeout, InvalidEvent
from sdk.event import Event
from sdk.filters import Where, compile_where

REF = "_from"
"""The payload key of a derived event: ``[source version, index]`` (PROTOCOL.md, "Transforms")."""

STATUS_TYPE = "transform:status"
"""The type of a transform's status events (its ``stats()``), published with source
``NAME.status`` about once a second while it runs and once when it stops: what ``pryxbus top``
and the Prometheus endpoint show."""

Output = tuple[str, Any] | tuple[str, Any, "str | None"]
Mapper = Callable[[Event], Any]
"""``fn(event)``: None, one Output, or several (an iterable; in asyncio also an awaitable of
those, or an async iterable)."""

Derived = tuple[str, dict[str, Any], "str | None"]
"""An output made an event to publish: ``(type, payload with REF, session_id)``."""

LOG_POLL = 0.02
"""Seconds between two looks at a log that has not reached the broker's version yet."""


def check_output(item: Any) -> Output:
    """One output of a mapper, checked.

    Raises:
        InvalidEvent: it is not ``(type, payload[, session_id])``.
    """
    if not (isinstance(item, tuple) and 2 <= len(item) <= 3 and isinstance(item[0], str)):
        raise InvalidEvent(f"a transform output must be (type, payload[, session_id]), not {item!r}")
    return item


def one_output(result: Any) -> bool:
    """Whether a mapper's result is a single output rather than several."""
    return isinstance(result, tuple) and bool(result) and isinstance(result[0], str)


def outputs_of(result: Any) -> Iterator[Output]:
    """What a mapper returned, one ``(type, payload[, session_id])`` at a time: None or ``[]`` is
    nothing, one tuple is one event, a list (or any iterable, a generator too: each output is
    published as it is made) is several.

    Raises:
        InvalidEvent: anything else.
    """
    if result is None:
        return
    if one_output(result):
        items: Iterable[Any] = (result,)
    else:
        try:
            items = iter(result)
        except TypeError:
            raise InvalidEvent(
                f"a transform's function must return (type, payload[, session_id]), several of them or None, not {result!r}"
            ) from None
    for item in items:
        yield check_output(item)


def publisher_id_of(name: str) -> int:
    """The publisher id of the transform ``name`` (PROTOCOL.md §4.1): the same in every run, so
    the broker deduplicates what a restarted run sends again of what a killed one had sent."""
    digest = hashlib.blake2b(b"pryxbus transform\x00" + name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") | NUMBER_BASE


class Progress(NamedTuple):
    """Where a transform resumes."""

    version: int
    """The source version of its newest derived event (``start`` without one)."""
    index: int
    """That event's index among its source event's outputs (-1 without one)."""
    number: int
    """Its number as publisher ``publisher_id_of(name)`` (NUMBER_BASE without one): the next
    run numbers its events after it."""


def progress_of(rows: list[Any], name: str, start: int, publisher_id: int) -> Progress:
    """The Progress in the log row of the newest derived event (``rows``: none or that one).

    Raises:
        BusError: the row is another source's (a log whose ``tail`` ignores ``source``).
    """
    if rows:
        event = event_of_row(rows[0])
        if event.source != name:
            raise BusError(
                f"the event log answered the newest event of source {name!r} with one of {event.source!r}:"
                " it cannot tell where the transform resumes"
            )
        ref = event.payload.get(REF) if isinstance(event.payload, dict) else None
        if isinstance(ref, list) and len(ref) == 2 and all(type(x) is int for x in ref):
            number = event.publisher[1] if event.publisher and event.publisher[0] == publisher_id else NUMBER_BASE
            return Progress(ref[0], ref[1], number)
    return Progress(start, -1, NUMBER_BASE)


def progress(name: str, start: int, log_timeout: float) -> Flow[Progress]:
    """Where the transform ``name`` resumes, from its newest event in the log (or ``start``),
    asked once the log has every event the broker stamped so far, so nothing it sent before a
    crash is still on its way to the log, except what had not reached the broker yet: that the
    broker deduplicates (the same publisher id and numbers as the next run's).

    Raises:
        BusTimeout: the log did not catch up with the broker within ``log_timeout``.
        BusUnavailable: the broker or the log did not answer.
    """
    stamped = int((yield Ask("control", PING))["version"])
    deadline = time.monotonic() + log_timeout
    while int((yield Ask("log", {"op": "stats"}))["last"]) < stamped:
        if time.monotonic() >= deadline:
            raise BusTimeout(f"the event log did not reach version {stamped} within {log_timeout:g}s")
        yield Sleep(LOG_POLL)
    rows = (yield Ask("log", {"op": "tail", "limit": 1, "source": name}))["events"]
    return progress_of(rows, name, start, publisher_id_of(name))


class TransformCore:
    """A transform's state and rules; the fronts add the I/O (see the module docstring)."""

    bus: Any
    """The transform's bus (``sdk.Bus`` or ``sdk.aio.Bus``), connected with its name."""

    def __init__(
        self,
        bus: Any,
        patterns: Iterable[str],
        fn: Mapper,
        *,
        session_id: str | None = None,
        where: Where = None,
        start: int = 0,
        log_timeout: float = 30.0,
        status_interval: float = 1.0,
    ) -> None:
        self.bus = bus
        self.name = bus.name
        self.patterns = tuple(patterns)
        self.fn = fn
        self.session_id = session_id
        self.where = compile_where(where)
        self.start = start
        self.log_timeout = log_timeout
        self.status_interval = status_interval
        self._matches = compile_matcher(self.patterns)
        self.consumed = 0
        """Source events handed to ``fn`` since this object was made."""
        self.published = 0
        """Derived events published since this object was made."""
        self.skipped = 0
        """Outputs not published again on resume: the log already had them."""
        self.resumes = 0
        self.done_version = 0
        """The last source version whose outputs are all published."""
        self.lag = 0.0
        """Seconds between the last source event's publication and its outputs'."""
        self._status_at = 0.0
        self._last_event_at: float | None = None
        self._numbered = NUMBER_BASE  # the number of the last event the transform published
        self._stop = threading.Event()
        self._status_bus: Any = None

    def _progress(self) -> Flow[Progress]:
        return progress(self.name, self.start, self.log_timeout)

    def _begin(self, found: Progress) -> tuple[int, int] | None:
        """Take the progress found in the log: number the bus's events after the transform's
        last; return the source event to redo (its version and the index of its last output
        already logged), or None."""
        self.bus._number_after(publisher_id_of(self.name), found.number)
        self._numbered = found.number
        version, index = found.version, found.index
        if index < 0:
            self.done_version = version
            return None
        self.done_version = max(version - 1, 0)
        self.resumes += 1
        return version, index

    @staticmethod
    def _skip(event: Event, redo: tuple[int, int] | None) -> int:
        """The index up to which ``event``'s outputs are already in the log (-1: none)."""
        return redo[1] if redo is not None and event.version == redo[0] else -1

    def _own(self, event: Event) -> bool:
        """Whether ``event`` is this transform's own (never consumed; it counts as done)."""
        if event.source in (self.name, f"{self.name}.status"):
            self.done_version = event.version
            return True
        return False

    def _derived(self, event: Event, index: int, output: Output, skip: int) -> Derived | None:
        """Output ``index`` of ``event`` as an event to publish, or None if the log has it already.

        Raises:
            InvalidEvent: its type matches the transform's own patterns, or its payload is not a map.
        """
        event_type, payload = output[0], output[1]
        session = output[2] if len(output) == 3 else event.session_id
        if self._matches(event_type.encode("utf-8", "surrogatepass")):
            raise InvalidEvent(f"transform {self.name!r}: output type {event_type!r} matches its own patterns")
        if index <= skip:
            self.skipped += 1
            return None
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise InvalidEvent(f"transform {self.name!r}: an output payload must be a map (or None), not {payload!r}")
        if self.bus._number != self._numbered:
            raise BusError(
                f"transform {self.name!r}: its bus published {self.bus._number - self._numbered} event(s) of"
                " something else, numbered as the transform (a restart would take its own for repeats of them):"
                " give the transform a bus of its own"
            )
        return event_type, {**payload, REF: [event.version, index]}, session

    def _sent(self) -> None:
        """A derived event was published."""
        self.published += 1
        self._numbered = self.bus._number

    def _finished(self, event: Event) -> None:
        """Every output of ``event`` is published."""
        self.done_version = event.version
        now = time.time()
        self.lag = max(0.0, now - event.ts)
        self._last_event_at = now

    def _status_due(self, final: bool) -> bool:
        if self.status_interval <= 0:
            return False
        now = time.monotonic()
        if not final and now < self._status_at:
            return False
        self._status_at = now + self.status_interval
        return True

    def _stats(self, behind: int | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "consumed": self.consumed,
            "published": self.published,
            "skipped": self.skipped,
            "resumes": self.resumes,
            "done_version": self.done_version,
            "lag_seconds": self.lag,
            "behind": behind,
        }

    def _behind(self, ping: dict[str, Any]) -> int:
        return max(0, int(ping["version"]) - self.done_version)

    def _status_payload(self, stats: dict[str, Any], final: bool) -> dict[str, Any]:
        return {
            **stats, "running": not final, "at": time.time(), "last_event_at": self._last_event_at,
            "patterns": list(self.patterns),
        }
