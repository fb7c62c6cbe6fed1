"""The asyncio Bus's reading of the event log: ``replay``, ``log_tail``, ``log_stats`` and
``log_summary``, as ``sdk.Bus`` has them, awaited. A mixin of :class:`sdk.aio.Bus`; the flows are
those of the sync SDK (``sdk.replay``, ``sdk.session_archive``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sdk.core.flows import drive_async
from sdk.event import Event
from sdk.filters import Where, afiltered, compile_where
from sdk.wire import check_subscription

if TYPE_CHECKING:
    from sdk.request import AsyncRequester


class EventLogReading:
    """What an asyncio bus reads from the event log."""

    if TYPE_CHECKING:  # the bus's own

        @property
        def log(self) -> AsyncRequester: ...

        def _server(self, name: str) -> AsyncRequester: ...

    def replay(
        self,
        *patterns: str,
        since: int = 0,
        until: int | None = None,
        session_id: str | None = None,
        ts_from: float | None = None,
        ts_until: float | None = None,
        where: Where = None,
    ) -> AsyncIterator[Event]:
        """``async for ev in bus.replay(...)``: logged events in version order (see :meth:`sdk.Bus.replay`).

        Raises:
            InvalidEvent: an invalid pattern (at once).
            BusUnavailable: the event log did not answer.
        """
        from sdk.replay import areplay

        checked = check_subscription(patterns, "drop")
        keep = compile_where(where)
        return afiltered(areplay(
            self.log,
            checked,
            since=since,
            until=until,
            session_id=session_id,
            ts_from=ts_from,
            ts_until=ts_until,
        ), keep)

    async def log_tail(self, *patterns: str, limit: int = 10, session_id: str | None = None) -> list[Event]:
        """See :meth:`sdk.Bus.log_tail`.

        Raises:
            InvalidEvent: an invalid pattern.
            BusUnavailable: the event log did not answer.
        """
        from sdk.session_archive import log_tail

        checked = check_subscription(patterns, "drop")
        return await drive_async(log_tail(checked, limit=limit, session_id=session_id), self._server)

    async def log_stats(self) -> dict[str, Any]:
        """See :meth:`sdk.Bus.log_stats`.

        Raises:
            BusUnavailable: the event log did not answer.
        """
        return await self.log.call({"op": "stats"})  # type: ignore[no-any-return]

    async def log_summary(
        self, *, bucket: float | None = None, ts_from: float | None = None, ts_until: float | None = None
    ) -> dict[str, Any]:
        """See :meth:`sdk.Bus.log_summary`.

        Raises:
            BusUnavailable: the event log did not answer.
        """
        from sdk.session_archive import bus_summary

        return await drive_async(bus_summary(bucket=bucket, ts_from=ts_from, ts_until=ts_until), self._server)
