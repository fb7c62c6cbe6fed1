"""The asyncio session client: the same calls as ``SessionClient``, as coroutines, on ``zmq.asyncio``.

Requests and replies go through the same pure builders (``sdk.sessions.SessionCalls``) and the
same reply check (``sdk.request``) as the synchronous client; only the Lazy Pirate loop is async.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgpack
import zmq
import zmq.asyncio

from schemas.sessions import MAX_LIST_LIMIT
from sdk.errors import BusClosed, BusUnavailable, RemoteError
from sdk.event import Session
from sdk.request import _result, connected, encoded, unanswered
from sdk.sessions import DEFAULT_RETRIES, Call, SessionCalls, SessionPage, translated

T = TypeVar("T")


def _packb(request: Any) -> bytes:
    return msgpack.packb(request, use_bin_type=True)


class AsyncRequester:
    """Lazy Pirate over an asyncio REQ socket: time out, rebuild the socket, retry, then give up.

    Calls from several tasks are serialised (one REQ socket has one request in flight). A call
    that is cancelled discards its socket, so the next call starts clean.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        timeout: float = 5.0,
        retries: int = DEFAULT_RETRIES,
        what: str = "server",
    ) -> None:
        self._ctx = ctx
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.what = what
        self._lock = asyncio.Lock()
        self._sock: zmq.asyncio.Socket | None = None
        self._closed = False

    def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def call(self, request: dict[str, Any], *, timeout: float | None = None, retries: int | None = None) -> Any:
        """Send ``request`` and return the reply's ``result``.

        Raises:
            BusUnavailable: no reply after every retry.
            SessionNotFound, SessionConflict, RemoteError: the server said no.
            BusClosed: the client was closed.
        """
        payload = encoded(_packb, request, self.what)
        timeout_ms = int((self.timeout if timeout is None else timeout) * 1000)
        attempts = 1 + (self.retries if retries is None else retries)
        async with self._lock:
            for _ in range(attempts):
                if self._closed:
                    raise BusClosed(f"{self.what} client is closed")
                if self._sock is None:
                    sock = self._ctx.socket(zmq.REQ)
                    sock.linger = 0
                    self._sock = connected(sock, self.endpoint, self.what)
                try:
                    await self._sock.send(payload)
                    if await self._sock.poll(timeout_ms, zmq.POLLIN):
                        reply = await self._sock.recv()
                        break
                except zmq.ZMQError:
                    pass
                except BaseException:  # cancelled mid-request: the REQ state is unknown
                    self._discard()
                    raise
                self._discard()
            else:
                raise unanswered(self.what, self.endpoint, attempts, timeout_ms)
        return _result(reply, self.what)

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._closed = True
        self._discard()


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
        archive: Callable[[], Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._requester = AsyncRequester(ctx, endpoint, timeout=timeout, retries=retries, what="session service")
        self._archive = archive  # a sync SessionClient with the event log, run in worker threads

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
        return await self._in_thread("stats", id)

    # -- with the event log (issue 4): the sync implementation, in a worker thread ------------

    async def _in_thread(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._archive is None:
            raise BusUnavailable("this session client has no event log; use bus.sessions from sdk.aio.connect()")
        client = self._archive()
        return await asyncio.to_thread(getattr(client, method), *args, **kwargs)

    async def restore(self, session: dict[str, str], *, overwrite: bool = False) -> Session:
        """See :meth:`sdk.sessions.SessionClient.restore`."""
        return await self._do(SessionCalls.restore(session, overwrite))

    async def resume(self, id: str) -> Any:
        """See :meth:`sdk.sessions.SessionClient.resume`."""
        return await self._in_thread("resume", id)

    async def export(self, id: str, path: str | os.PathLike[str]) -> int:
        """See :meth:`sdk.sessions.SessionClient.export`."""
        return await self._in_thread("export", id, path)

    async def import_(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Session:
        """See :meth:`sdk.sessions.SessionClient.import_`."""
        return await self._in_thread("import_", path, overwrite=overwrite)

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._requester.close()
