"""Request/reply with a server (broker control, session service, event log): the Lazy Pirate pattern.

A REQ socket whose reply was lost is stuck (DESIGN.md §4.5), so each attempt that times out
closes the socket, opens a fresh one and sends again, a bounded number of times, then raises
``BusUnavailable``. Requests must therefore be idempotent; the session client makes them so.

The loop is written once, as a flow (:func:`lazy_pirate`): a generator that yields the I/O it
needs (:class:`Exchange`: send, then wait for the reply; :data:`REBUILD`: drop the socket) and
gets the reply back. :class:`Requester` drives it with blocking sockets, :class:`AsyncRequester`
with ``zmq.asyncio`` ones; neither decides anything itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from typing import Any, Final, NamedTuple

import msgpack
import zmq
import zmq.asyncio

from sdk.errors import (
    BusClosed, BusUnavailable, InvalidEvent, RemoteError, SessionConflict, SessionError, SessionNotFound, not_unicode,
)

_send = zmq.backend.Socket.send  # the compiled send, without pyzmq's Python wrapper
_unpack = msgpack.unpackb

_ERRORS: dict[str, type[SessionError] | type[RemoteError]] = {
    "not_found": SessionNotFound,
    "conflict": SessionConflict,
}


class Exchange(NamedTuple):
    """A step of :func:`lazy_pirate`: send ``payload`` (on a fresh socket if there is none), then
    wait up to ``timeout_ms`` for the reply. The driver sends back the reply, or None if none came
    (or the socket refused the send)."""

    payload: bytes
    timeout_ms: int


class _Rebuild:
    def __repr__(self) -> str:
        return "REBUILD"


REBUILD: Final = _Rebuild()
"""A step of :func:`lazy_pirate`: close the socket (it is stuck); the next Exchange opens a new one."""

Step = Exchange | _Rebuild
PirateFlow = Generator[Step, bytes | None, Any]


def lazy_pirate(payload: bytes, *, timeout_ms: int, attempts: int, what: str, endpoint: str) -> PirateFlow:
    """The Lazy Pirate loop for one request: returns the reply's ``result``.

    Raises:
        BusUnavailable: no reply after ``attempts`` tries.
        SessionNotFound, SessionConflict, SessionError, RemoteError: the server said no.
    """
    for _ in range(attempts):
        reply = yield Exchange(payload, timeout_ms)
        if reply is not None:
            return reply_result(reply, what)
        yield REBUILD  # a REQ that lost its reply is stuck: start over
    raise unanswered(what, endpoint, attempts, timeout_ms)


class _RequesterBase:
    """What both requesters share: the endpoint, defaults, encoding and the flow of a call."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        *,
        timeout: float = 2.0,
        retries: int = 3,
        what: str = "server",
        socket_options: dict[int, Any] | None = None,
    ) -> None:
        self._ctx = ctx
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.what = what
        self._options = socket_options or {}
        self._closed = False
        self._pack = msgpack.Packer(use_bin_type=True).pack  # not thread-safe: used under the lock

    def _flow(self, request: dict[str, Any], timeout: float | None, retries: int | None) -> PirateFlow:
        if self._closed:
            raise BusClosed(f"{self.what} client is closed")
        return lazy_pirate(
            encoded(self._pack, request, self.what),
            timeout_ms=int((self.timeout if timeout is None else timeout) * 1000),
            attempts=1 + (self.retries if retries is None else retries),
            what=self.what,
            endpoint=self.endpoint,
        )

    def _socket(self) -> Any:
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        for option, value in self._options.items():
            sock.setsockopt(option, value)
        return connected(sock, self.endpoint, self.what)


class Requester(_RequesterBase):
    """A thread-safe Lazy Pirate client for one endpoint. Owns its socket, not the context."""

    def __init__(self, ctx: zmq.Context, endpoint: str, **options: Any) -> None:
        super().__init__(ctx, endpoint, **options)
        self._lock = threading.Lock()
        self._sock: zmq.Socket | None = None
        self._rcvtimeo = -1

    def _discard(self) -> None:
        self._rcvtimeo = -1
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _exchange(self, step: Exchange) -> bytes | None:
        sock = self._sock
        if sock is None:
            sock = self._sock = self._socket()
        try:
            if self._rcvtimeo != step.timeout_ms:
                # The send is bounded too: a REQ with no live connection (a CURVE handshake the
                # server refused) blocks in send, not in recv.
                sock.rcvtimeo = sock.sndtimeo = self._rcvtimeo = step.timeout_ms
            _send(sock, step.payload)
            return sock.recv()  # Again after rcvtimeo: cheaper than a poll per call
        except zmq.ZMQError:
            return None

    def call(self, request: dict[str, Any], *, timeout: float | None = None, retries: int | None = None) -> Any:
        """Send ``request`` (a map with an ``op``) and return the reply's ``result``.

        Args:
            timeout: seconds to wait for each attempt's reply (default: the client's).
            retries: attempts after the first (default: the client's).

        Raises:
            InvalidEvent: the request cannot be encoded (text that is not Unicode: a lone
                surrogate, as a non-UTF-8 command-line argument gives); nothing was sent.
            BusUnavailable: no reply after every retry.
            BusClosed: the client was closed.
            SessionNotFound, SessionConflict, SessionError, RemoteError: the server said no.
        """
        with self._lock:
            flow = self._flow(request, timeout, retries)
            step = next(flow)
            try:
                while True:
                    if step is REBUILD:
                        self._discard()
                        step = flow.send(None)
                    else:
                        step = flow.send(self._exchange(step))  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value

    def close(self) -> None:
        """Close the socket; idempotent."""
        with self._lock:
            self._closed = True
            self._discard()


class AsyncRequester(_RequesterBase):
    """The same Lazy Pirate client for asyncio (a ``zmq.asyncio`` context).

    Calls from several tasks are serialised (one REQ socket has one request in flight). A call
    that is cancelled discards its socket, so the next call starts clean.
    """

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, **options: Any) -> None:
        super().__init__(ctx, endpoint, **options)
        self._lock = asyncio.Lock()
        self._sock: zmq.asyncio.Socket | None = None

    def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def _exchange(self, step: Exchange) -> bytes | None:
        sock = self._sock
        if sock is None:
            sock = self._sock = self._socket()
        try:
            if not await sock.poll(step.timeout_ms, zmq.POLLOUT):  # no live connection to send on
                return None
            await sock.send(step.payload)
            if await sock.poll(step.timeout_ms, zmq.POLLIN):
                return await sock.recv()
        except zmq.ZMQError:
            pass
        return None

    async def call(self, request: dict[str, Any], *, timeout: float | None = None, retries: int | None = None) -> Any:
        """Send ``request`` and return the reply's ``result`` (see :meth:`Requester.call`).

        Raises:
            InvalidEvent: the request cannot be encoded; nothing was sent.
            BusUnavailable: no reply after every retry.
            BusClosed: the client was closed.
            SessionNotFound, SessionConflict, SessionError, RemoteError: the server said no.
        """
        async with self._lock:
            flow = self._flow(request, timeout, retries)
            step = next(flow)
            try:
                while True:
                    if step is REBUILD:
                        self._discard()
                        step = flow.send(None)
                    else:
                        step = flow.send(await self._exchange(step))  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value
            except BaseException:  # cancelled mid-request: the REQ state is unknown
                self._discard()
                raise

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._closed = True
        self._discard()


def encoded(pack: Callable[[Any], bytes], request: dict[str, Any], what: str) -> bytes:
    """``pack(request)``, or InvalidEvent naming the field that cannot be encoded.

    Raises:
        InvalidEvent: a field msgpack cannot encode (the one that is not Unicode, if any).
    """
    try:
        return pack(request)
    except (TypeError, ValueError, OverflowError) as e:  # UnicodeEncodeError is a ValueError
        for key, value in request.items():
            for text in value if isinstance(value, (list, tuple)) else [value]:
                refused = not_unicode(repr(key), text)
                if refused is not None:
                    raise refused from None
        raise InvalidEvent(f"cannot encode this request to the {what}: {e}") from None


def connected(sock: zmq.Socket, endpoint: str, what: str) -> zmq.Socket:
    """``sock`` connected to ``endpoint`` (sync and asyncio sockets).

    Raises:
        BusUnavailable: it cannot even connect (a bad endpoint); the socket is closed first, since
            one left open would hang its context's ``term()``.
    """
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        raise BusUnavailable(f"cannot connect to the {what} at {endpoint}: {e}") from None
    return sock


def unanswered(what: str, endpoint: str, attempts: int, timeout_ms: int) -> BusUnavailable:
    """The error of a request that got no reply after every attempt."""
    return BusUnavailable(f"{what} at {endpoint} did not answer ({attempts} attempt(s), {timeout_ms / 1000:g}s each)")


def reply_result(reply: bytes, what: str) -> Any:
    """The ``result`` of a server's reply (a msgpack map with ``ok``), or its error raised.

    Raises:
        SessionNotFound, SessionConflict: the session service's ``not_found``/``conflict`` codes.
        RemoteError: any other error code, or a reply that is not a well-formed reply map.
    """
    try:
        msg = _unpack(reply, raw=False, strict_map_key=False)
    except Exception as e:
        raise RemoteError(f"{what} sent a reply that is not msgpack", "bad_reply") from e
    if not isinstance(msg, dict) or "ok" not in msg:
        raise RemoteError(f"{what} sent a reply without 'ok'", "bad_reply")
    if msg["ok"]:
        return msg.get("result")
    code = str(msg.get("code", "error"))
    message = str(msg.get("message", "request failed"))
    raise _ERRORS.get(code, RemoteError)(message, code)
