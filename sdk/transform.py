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

:class:`AsyncTransform` (:mod:`sdk.aio_transform`) is the same for ``sdk.aio``; both share
:mod:`sdk.core.transforming`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdk.aio_transform import AsyncTransform
from sdk.core.flows import drive
from sdk.core.transforming import REF, STATUS_TYPE, Mapper, Output, Progress, TransformCore, outputs_of
from sdk.errors import BusError, BusTimeout, SlowSubscriberError
from sdk.event import Event

__all__ = ["REF", "STATUS_TYPE", "AsyncTransform", "Mapper", "Output", "Progress", "Transform", "outputs_of"]


class Transform(TransformCore):
    """Derive events from the events matching ``patterns`` with ``fn`` (see the module docstring).

    ``bus`` should be connected with ``name=`` the transform's name (its events' ``source``).
    ``start``: where a transform with no derived event in the log yet begins (exclusive version;
    0: every logged event first).
    """

    def progress(self) -> Progress:
        """``(version, index, number)`` of the newest event this transform has in the log, or
        ``(start, -1, NUMBER_BASE)`` if none (:func:`sdk.core.transforming.progress`).

        Raises:
            BusTimeout: the log did not catch up with the broker within ``log_timeout``.
            BusUnavailable: the broker or the log did not answer.
        """
        return drive(self._progress(), self.bus._server)

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
        self.bus.flush()  # what this bus published before is confirmed, so in the log
        redo = self._begin(self.progress())
        try:
            self._consume(redo, poll, until)
            self.bus.flush()
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
                        skip = self._skip(event, redo)
                        redo = None
                        self._one(event, skip)
                        if until is not None and until(self):
                            return
            except SlowSubscriberError:
                continue  # resubscribe from done_version: the log has what was lost

    def _one(self, event: Event, skip: int) -> None:
        if self._own(event):
            return
        outputs = outputs_of(self.fn(event))
        self.consumed += 1
        for index, output in enumerate(outputs):
            derived = self._derived(event, index, output, skip)
            if derived is not None:
                self.bus.publish(derived[0], derived[1], session_id=derived[2])
                self._sent()
        self._finished(event)

    def _status(self, *, final: bool = False) -> None:
        """Publish the transform's stats as a STATUS_TYPE event, at most every ``status_interval``
        (and once more when it stops), from a second connection named ``NAME.status`` so that its
        progress (the newest event of NAME) stays a derived event."""
        if not self._status_due(final):
            return
        try:
            if self._status_bus is None:
                import sdk

                self._status_bus = sdk.connect(
                    self.bus.endpoints, name=f"{self.name}.status", timeout=self.bus.timeout, curve=self.bus.curve or False
                )
            self._status_bus.publish(STATUS_TYPE, self._status_payload(self.stats(), final))
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
            behind: int | None = self._behind(self.bus.control.call({"op": "ping"}))
        except BusError:
            behind = None
        return self._stats(behind)
