"""The asyncio session client: the same calls as ``SessionClient``, as coroutines, on ``zmq.asyncio``.

Requests and replies go through the same pure builders (``sdk.sessions.SessionCalls``), the same
Lazy Pirate flow (``sdk.request``) and the same event-log flows (``sdk.session_archive``) as the
synchronous client; only the driver differs (:func:`sdk.core.flows.drive_async`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import zmq
import zmq.asyncio

from schemas.endpoints import Endpoints
from schemas.sessions import MAX_LIST_LIMIT
from sdk.errors import BusUnavailable, RemoteError
from sdk.event import Session
from sdk.core.flows import drive_async
from sdk.request import AsyncRequester
from sdk.sessions import DEFAULT_RETRIES, Call, SessionCalls, SessionPage, translated

if TYPE_CHECKING:
    from sdk.session_archive import SessionHistory

T = TypeVar("T")

__all__ = ["AsyncRequester", "AsyncSessionClient"]


class AsyncSessionClient:
    """Sessions for asyncio code: ``await client.create(...)`` etc. Usually ``bus.sessions``.

    Same methods, arguments, results and exceptions as :class:`sdk.sessions.SessionClient`.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        timeout: float = 5.0,
        retries: int = DEFAULT_RETRIES,
        log: Callable[[], AsyncRequester] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._requester = AsyncRequester(ctx, endpoint, timeout=timeout, retries=retries, what="session service")
        self._log = log  # the event log client, for resume/export/import_/stats(id)
        self._own_ctx: zmq.asyncio.Context | None = None

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | Endpoints | None = None,
        *,
        timeout: float = 5.0,
        retries: int = DEFAULT_RETRIES,
        curve: Any = None,
    ) -> AsyncSessionClient:
        """A standalone client (its own context); see :meth:`sdk.sessions.SessionClient.open`.

        ``async with AsyncSessionClient.open(home) as sessions:`` or call :meth:`close`.

        Raises:
            InvalidEvent: ``home`` is not a home directory or ``tcp://HOST:PORT``.
            BusUnavailable: CURVE keys were asked for and cannot be loaded.
        """
        from sdk.bus import resolve_endpoints
        from sdk.security import resolve_client_keys, secure_client_context

        endpoints = resolve_endpoints(home)
        ctx = secure_client_context(zmq.asyncio.Context(), resolve_client_keys(curve, home))
        client = cls(ctx, endpoints.sessions, timeout=timeout, retries=retries)
        client._own_ctx = ctx
        return client

    async def _do(self, call: Call[T], **options: Any) -> T:
        try:
            result = await self._requester.call(call.request, **options)
        except RemoteError as e:
            raise translated(e) from None
        return call.parse(result)

    async def create(self, title: str, *, id: str | None = None) -> Session:
        """See :meth:`sdk.sessions.SessionClient.create`."""
        return await self._do(SessionCalls.create(title, id))

    async def get(self, id: str) -> Session:
        """See :meth:`sdk.sessions.SessionClient.get`."""
        return await self._do(SessionCalls.get(id))

    async def list(self, limit: int = MAX_LIST_LIMIT, *, offset: int = 0) -> list[Session]:
        """See :meth:`sdk.sessions.SessionClient.list`."""
        return await self._do(SessionCalls.list(limit, offset))

    async def page(self, limit: int = MAX_LIST_LIMIT, *, cursor: str | None = None, offset: int = 0) -> SessionPage:
        """See :meth:`sdk.sessions.SessionClient.page`."""
        return await self._do(SessionCalls.page(limit, cursor, offset))

    async def iterate(self, *, page_size: int = MAX_LIST_LIMIT) -> AsyncIterator[Session]:
        """See :meth:`sdk.sessions.SessionClient.iterate`."""
        cursor = None
        while True:
            page = await self.page(page_size, cursor=cursor)
            for session in page.sessions:
                yield session
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def ensure(self, id: str, title: str) -> Session:
        """See :meth:`sdk.sessions.SessionClient.ensure`."""
        return await self._do(SessionCalls.ensure(id, title))

    async def rename(self, id: str, title: str) -> Session:
        """See :meth:`sdk.sessions.SessionClient.rename`."""
        return await self._do(SessionCalls.rename(id, title))

    async def touch(self, id: str) -> Session:
        """See :meth:`sdk.sessions.SessionClient.touch`."""
        return await self._do(SessionCalls.touch(id))

    async def delete(self, id: str) -> Session:
        """See :meth:`sdk.sessions.SessionClient.delete`."""
        return await self._do(SessionCalls.delete(id))

    async def ping(self, *, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """See :meth:`sdk.sessions.SessionClient.ping`."""
        return await self._do(SessionCalls.ping(), timeout=timeout, retries=retries)

    async def stats(self, id: str | None = None) -> dict[str, Any]:
        """See :meth:`sdk.sessions.SessionClient.stats`."""
        if id is None:
            return await self._do(SessionCalls.stats())
        from sdk import session_archive

        return await drive_async(session_archive.session_stats(id), self._server)

    # -- with the event log (issue 4): flows of sdk/session_archive.py ----------------------

    def _server(self, name: str) -> AsyncRequester:
        if name == "sessions":
            return self._requester
        if self._log is None:
            raise BusUnavailable("this session client has no event log; use bus.sessions from sdk.aio.connect()")
        return self._log()

    async def restore(self, session: dict[str, str], *, overwrite: bool = False) -> Session:
        """See :meth:`sdk.sessions.SessionClient.restore`."""
        return await self._do(SessionCalls.restore(session, overwrite))

    async def resume(self, id: str) -> SessionHistory:
        """See :meth:`sdk.sessions.SessionClient.resume`."""
        from sdk import session_archive

        return await drive_async(session_archive.resume(id), self._server)

    async def export(self, id: str, path: str | os.PathLike[str]) -> int:
        """See :meth:`sdk.sessions.SessionClient.export`."""
        from sdk import session_archive

        return await drive_async(session_archive.export(id, path), self._server)

    async def import_(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Session:
        """See :meth:`sdk.sessions.SessionClient.import_`."""
        from sdk import session_archive

        return await drive_async(session_archive.import_(path, overwrite=overwrite), self._server)

    def close(self) -> None:
        """Close the socket (and the context if :meth:`open` made it); idempotent."""
        self._requester.close()
        if self._own_ctx is not None:
            self._own_ctx.term()
            self._own_ctx = None

    async def __aenter__(self) -> AsyncSessionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
