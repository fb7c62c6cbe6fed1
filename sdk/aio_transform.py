"""The asyncio transform: :class:`sdk.transform.Transform` for ``sdk.aio``.

>>> import sdk.aio
>>> from sdk.transform import AsyncTransform
>>> async def main():
...     async with sdk.aio.connect(name="audit-redactor") as bus:     # the name is its identity
...         await AsyncTransform(bus, ["agent:*"], redact).run()       # until .stop()

The rules (outputs, progress in the log, resume, skipped outputs, status) are those of the sync
transform, written once in :mod:`sdk.core.transforming`; this module does only the asyncio I/O.
``fn`` may also be a coroutine function (its result is awaited) or return an async iterable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from sdk.core.flows import drive_async
from sdk.core.transforming import STATUS_TYPE, Mapper, Output, Progress, TransformCore, check_output, outputs_of
from sdk.errors import BusError, BusTimeout, SlowSubscriberError
from sdk.event import Event

__all__ = ["AsyncTransform"]


class AsyncTransform(TransformCore):
    """Derive events from the events matching ``patterns`` with ``fn``, on an ``sdk.aio`` bus
    connected with ``name=`` the transform's name. The arguments are those of
    :class:`sdk.transform.Transform`; :meth:`run`, :meth:`progress` and :meth:`stats` are awaited."""

    async def progress(self) -> Progress:
        """See :meth:`sdk.transform.Transform.progress`.

        Raises:
            BusTimeout: the log did not catch up with the broker within ``log_timeout``.
            BusUnavailable: the broker or the log did not answer.
        """
        return await drive_async(self._progress(), self.bus._server)

    def stop(self) -> None:
        """Make :meth:`run` return after the event in hand (safe from a signal handler, a task or a thread)."""
        self._stop.set()

    async def run(self, *, poll: float = 0.2, until: Callable[[AsyncTransform], bool] | None = None) -> None:
        """See :meth:`sdk.transform.Transform.run`.

        Raises:
            InvalidEvent: the function returned something that is not an event, or an output whose
                type matches the transform's own patterns.
            BusError: the bus failed for good.
        """
        await self.bus.flush()  # what this bus published before is confirmed, so in the log
        redo = self._begin(await self.progress())
        try:
            await self._consume(redo, poll, until)
            await self.bus.flush()
        finally:
            await self._status(final=True)

    async def _consume(
        self, redo: tuple[int, int] | None, poll: float, until: Callable[[AsyncTransform], bool] | None
    ) -> None:
        while not self._stop.is_set():
            try:
                async with self.bus.subscribe(
                    *self.patterns, since=self.done_version, session_id=self.session_id, where=self.where
                ) as sub:
                    while not self._stop.is_set():
                        await self._status()
                        try:
                            event = await sub.recv(timeout=poll)
                        except BusTimeout:
                            continue
                        skip = self._skip(event, redo)
                        redo = None
                        await self._one(event, skip)
                        if until is not None and until(self):
                            return
            except SlowSubscriberError:
                continue  # resubscribe from done_version: the log has what was lost

    async def _one(self, event: Event, skip: int) -> None:
        if self._own(event):
            return
        result = self.fn(event)
        if inspect.isawaitable(result):
            result = await result
        self.consumed += 1
        if hasattr(result, "__aiter__"):
            index = 0
            async for item in result:
                await self._publish(event, index, check_output(item), skip)
                index += 1
        else:
            for index, output in enumerate(outputs_of(result)):
                await self._publish(event, index, output, skip)
        self._finished(event)

    async def _publish(self, event: Event, index: int, output: Output, skip: int) -> None:
        derived = self._derived(event, index, output, skip)
        if derived is not None:
            await self.bus.publish(derived[0], derived[1], session_id=derived[2])
            self._sent()

    async def _status(self, *, final: bool = False) -> None:
        """See :meth:`sdk.transform.Transform._status`: the stats as a ``transform:status`` event
        from a second connection named ``NAME.status``."""
        if not self._status_due(final):
            return
        try:
            if self._status_bus is None:
                import sdk.aio

                self._status_bus = await sdk.aio.connect(
                    self.bus.endpoints, name=f"{self.name}.status", timeout=self.bus.timeout, curve=self.bus.curve or False
                )
            await self._status_bus.publish(STATUS_TYPE, self._status_payload(await self.stats(), final))
        except BusError:
            pass  # a status is best effort; the next one says it again
        if final and self._status_bus is not None:
            await self._status_bus.close()
            self._status_bus = None

    async def stats(self) -> dict[str, Any]:
        """See :meth:`sdk.transform.Transform.stats`."""
        try:
            behind: int | None = self._behind(await self.bus.control.call({"op": "ping"}))
        except BusError:
            behind = None
        return self._stats(behind)
