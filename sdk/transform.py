"""Transformations: a long-running, restartable component that derives events from events.

A :class:`Transform` consumes the events matching some patterns (with ``session_id=`` and
``where=`` filters, as a subscription), maps each to zero, one or several events with a Python
function, and publishes them. Every derived event says where it came from: its envelope's
``source`` is the transform's name and its payload (a map) carries ``REF`` = ``[version, index]``,
the source event's version and the derived event's place among that source event's outputs.

That reference is also the transform's progress. On start it asks the event log for the newest
event it published (``tail`` by ``source``), once the log has everything the broker stamped, and
resumes with the source event it came from, skipping that event's outputs already logged. So a
restart after ``kill -9`` leaves the derived stream complete, in order and without duplicates, as
long as the function is deterministic and the name is the transform's alone (docs/sdk.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from schemas.topics import compile_matcher
from sdk.errors import BusError, BusTimeout, InvalidEvent, SlowSubscriberError
from sdk.event import Event
from sdk.filters import Where, compile_where

REF = "_from"
"""The payload key of a derived event: ``[source version, index]`` (PROTOCOL.md, "Transforms")."""

STATUS_TYPE = "transform:status"
"""The type of a transform's status events (its :meth:`Transform.stats`), published with source
``NAME.status`` about once a second while it runs and once when it stops: what ``pryxbus top``
and the Prometheus endpoint show."""

Output = tuple[str, Any] | tuple[str, Any, "str | None"]
Mapper = Callable[[Event], "Output | Iterable[Output] | None"]

__all__ = ["REF", "Mapper", "Output", "Transform", "outputs_of"]


def outputs_of(result: Any) -> Iterator[Output]:
    """What a mapper returned, one ``(type, payload[, session_id])`` at a time: None or ``[]`` is
    nothing, one tuple is one event, a list (or any iterable, a generator too: each output is
    published as it is made) is several.

    Raises:
        InvalidEvent: anything else.
    """
    if result is None:
        return
    if isinstance(result, tuple) and result and isinstance(result[0], str):
        items: Iterable[Any] = (result,)
    else:
        try:
            items = iter(result)
        except TypeError:
            raise InvalidEvent(
                f"a transform's function must return (type, payload[, session_id]), several of them or None, not {result!r}"
            ) from None
    for item in items:
        if not (isinstance(item, tuple) and 2 <= len(item) <= 3 and isinstance(item[0], str)):
            raise InvalidEvent(f"a transform output must be (type, payload[, session_id]), not {item!r}")
        yield item


class Transform:
    """Derive events from the events matching ``patterns`` with ``fn`` (see the module docstring).

    ``bus`` should be connected with ``name=`` the transform's name (its events' ``source``):
    :func:`open_transform` does that. ``start``: where a transform with no derived event in the log
    yet begins (exclusive version; 0: every logged event first).
    """

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
        self.name: str = bus.name
        self.patterns = tuple(patterns)
        self.fn = fn
        self.session_id = session_id
        self.where = compile_where(where)
        self.start = start
        self.log_timeout = log_timeout
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
        self._stop = threading.Event()
        self.status_interval = status_interval
        self._status_bus: Any = None
        self._status_at = 0.0
        self._last_event_at: float | None = None

    # -- progress ----------------------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """``(version, index)`` of the newest event this transform has in the log, or
        ``(start, -1)`` if none: asked once the log has every event the broker stamped so far, so
        nothing this transform sent before a crash is still on its way to the log.

        Raises:
            BusTimeout: the log did not catch up with the broker within ``log_timeout``.
            BusUnavailable: the broker or the log did not answer.
        """
        stamped = self.bus.control.call({"op": "ping"})["version"]
        deadline = time.monotonic() + self.log_timeout
        while self.bus.log_stats()["last"] < stamped:
            if time.monotonic() >= deadline:
                raise BusTimeout(f"the event log did not reach version {stamped} within {self.log_timeout:g}s")
            time.sleep(0.02)
        rows = self.bus.log.call({"op": "tail", "limit": 1, "source": self.name})["events"]
        if rows:
            from sdk.core.decoding import event_of_row

            payload = event_of_row(rows[0]).payload
            ref = payload.get(REF) if isinstance(payload, dict) else None
            if isinstance(ref, list) and len(ref) == 2 and all(type(x) is int for x in ref):
                return ref[0], ref[1]
        return self.start, -1

    # -- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`run` return after the event in hand (safe from a signal handler or a thread)."""
        self._stop.set()

    def run(self, *, poll: float = 0.2, until: Callable[[Transform], bool] | None = None) -> None:
        """Consume and publish until :meth:`stop` (or ``until(self)`` is true after an event).

        Falling behind (a loss on the live subscription) resubscribes from the last source event
        done: the seam fetches what was lost from the log.

        Raises:
            InvalidEvent: the function returned something that is not an event, or an output whose
                type matches the transform's own patterns (it would consume its own events).
            BusError: the bus failed for good.
        """
        version, index = self.progress()
        self.done_version = max(version - 1, 0) if index >= 0 else version
        redo = (version, index) if index >= 0 else None
        if redo is not None:
            self.resumes += 1
        try:
            self._consume(redo, poll, until)
        finally:
            self._status(final=True)

    def _consume(self, redo: tuple[int, int] | None, poll: float, until: Callable[[Transform], bool] | None) -> None:
        while not self._stop.is_set():
            try:
                with self.bus.subscribe(
                    *self.patterns, since=self.done_version, session_id=self.session_id, where=self.where
                ) as sub:
                    while not self._stop.is_set():
                        self._status()
                        try:
                            event = sub.recv(timeout=poll)
                        except BusTimeout:
                            continue
                        skip = redo[1] if redo is not None and event.version == redo[0] else -1
                        redo = None
                        self._one(event, skip)
                        if until is not None and until(self):
                            return
            except SlowSubscriberError:
                continue  # resubscribe from done_version: the log has what was lost

    def _one(self, event: Event, skip: int) -> None:
        if event.source in (self.name, f"{self.name}.status"):  # its own events: never consumed
            self.done_version = event.version
            return
        outputs = outputs_of(self.fn(event))
        self.consumed += 1
        for index, output in enumerate(outputs):
            event_type, payload = output[0], output[1]
            session = output[2] if len(output) == 3 else event.session_id
            if self._matches(event_type.encode("utf-8", "surrogatepass")):
                raise InvalidEvent(f"transform {self.name!r}: output type {event_type!r} matches its own patterns")
            if index <= skip:
                self.skipped += 1
                continue
            if payload is None:
                payload = {}
            if not isinstance(payload, dict):
                raise InvalidEvent(f"transform {self.name!r}: an output payload must be a map (or None), not {payload!r}")
            self.bus.publish(event_type, {**payload, REF: [event.version, index]}, session_id=session)
            self.published += 1
        self.done_version = event.version
        self.lag = max(0.0, time.time() - event.ts)
        self._last_event_at = time.time()

    def _status(self, *, final: bool = False) -> None:
        """Publish the transform's stats as a STATUS_TYPE event, at most every ``status_interval``
        (and once more when it stops), from a second connection named ``NAME.status`` so that its
        progress (the newest event of NAME) stays a derived event."""
        if self.status_interval <= 0:
            return
        now = time.monotonic()
        if not final and now < self._status_at:
            return
        self._status_at = now + self.status_interval
        try:
            if self._status_bus is None:
                import sdk

                self._status_bus = sdk.connect(
                    self.bus.endpoints, name=f"{self.name}.status", timeout=self.bus.timeout, curve=self.bus.curve or False
                )
            stats = self.stats()
            stats.update(running=not final, at=time.time(), last_event_at=self._last_event_at, patterns=list(self.patterns))
            self._status_bus.publish(STATUS_TYPE, stats)
        except BusError:
            pass  # a status is best effort; the next one says it again
        if final and self._status_bus is not None:
            self._status_bus.close()
            self._status_bus = None

    def stats(self) -> dict[str, Any]:
        """Counters and lag: ``consumed``, ``published``, ``skipped``, ``resumes``, ``done_version``,
        ``lag_seconds`` (the last source event's age when its outputs went), and ``behind``: versions
        the broker stamped past ``done_version`` (an upper bound of the source events still to do)."""
        try:
            behind: int | None = max(0, self.bus.control.call({"op": "ping"})["version"] - self.done_version)
        except BusError:
            behind = None
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
