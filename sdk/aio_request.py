"""Request/reply with a server from asyncio: the Lazy Pirate pattern of ``sdk.request``, awaited.

Same rules as the sync :class:`sdk.request.Requester`: an attempt that times out closes the REQ
socket, opens a fresh one and sends again (DESIGN.md §4.5), a bounded number of times, then
raises ``BusUnavailable``; error replies map to the same exceptions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from sdk.errors import BusClosed, BusUnavailable
from sdk.request import _result

_POLLIN = int(zmq.POLLIN)


class AsyncRequester:
    """A Lazy Pirate client for one endpoint, safe for concurrent tasks. Owns its socket, not the context."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        timeout: float = 2.0,
        retries: int = 3,
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

    def _open(self) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.connect(self.endpoint)
        return sock

    def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def call(
        self, request: dict[str, Any], *, timeout: float | None = None, retries: int | None = None
    ) -> Any:
        """Send ``request`` (a map with an ``op``) and return the reply's ``result``.

        Raises:
            BusUnavailable: no reply after every retry.
            BusClosed: the client was closed.
            SessionNotFound, SessionConflict, SessionError, RemoteError: the server said no.
        """
        payload = msgpack.packb(request, use_bin_type=True)
        timeout_ms = int((self.timeout if timeout is None else timeout) * 1000)
        attempts = 1 + (self.retries if retries is None else retries)
        async with self._lock:
            for _ in range(attempts):
                if self._closed:
                    raise BusClosed(f"{self.what} client is closed")
                if self._sock is None:
                    self._sock = self._open()
                sock = self._sock
                try:
                    await sock.send(payload)
                    if await sock.poll(timeout_ms, _POLLIN):
                        reply = await sock.recv()
                        break
                except zmq.ZMQError:
                    pass
                except asyncio.CancelledError:
                    self._discard()  # a cancelled REQ may be mid-exchange: never reuse it
                    raise
                self._discard()  # Lazy Pirate: a REQ that lost its reply is stuck; start over
            else:
                raise BusUnavailable(
                    f"{self.what} at {self.endpoint} did not answer"
                    f" ({attempts} attempt(s), {timeout_ms / 1000:g}s each)"
                )
        return _result(reply, self.what)

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._closed = True
        self._discard()
