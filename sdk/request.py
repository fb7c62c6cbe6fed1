"""Request/reply with a server (broker control, session service): the Lazy Pirate pattern.

A REQ socket whose reply was lost is stuck (DESIGN.md §4.5), so each attempt that times out
closes the socket, opens a fresh one and sends again, a bounded number of times, then raises
``BusUnavailable``. Requests must therefore be idempotent; the session client makes them so.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import zmq

from sdk.errors import (
    BusClosed, BusUnavailable, InvalidEvent, RemoteError, SessionConflict, SessionError, SessionNotFound, not_unicode,
)

_send = zmq.backend.Socket.send  # the compiled send, without pyzmq's Python wrapper
_unpack = msgpack.unpackb

_ERRORS: dict[str, type[SessionError] | type[RemoteError]] = {
    "not_found": SessionNotFound,
    "conflict": SessionConflict,
}


class Requester:
    """A thread-safe Lazy Pirate client for one endpoint. Owns its socket, not the context."""

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
        self._lock = threading.Lock()
        self._sock: zmq.Socket | None = None
        self._rcvtimeo = -1
        self._closed = False
        self._pack = msgpack.Packer(use_bin_type=True).pack  # not thread-safe: used under the lock

    def _open(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        for option, value in self._options.items():
            sock.setsockopt(option, value)
        return connected(sock, self.endpoint, self.what)

    def _discard(self) -> None:
        self._rcvtimeo = -1
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def call(self, request: dict[str, Any], *, timeout: float | None = None, retries: int | None = None) -> Any:
        """Send ``request`` (a map with an ``op``) and return the reply's ``result``.

        Raises:
            InvalidEvent: the request cannot be encoded (text that is not Unicode: a lone
                surrogate, as a non-UTF-8 command-line argument gives); nothing was sent.
            BusUnavailable: no reply after every retry.
            SessionNotFound, SessionConflict, SessionError, RemoteError: the server said no.
        """
        timeout_ms = int((self.timeout if timeout is None else timeout) * 1000)
        attempts = 1 + (self.retries if retries is None else retries)
        with self._lock:
            if self._closed:
                raise BusClosed(f"{self.what} client is closed")
            payload = encoded(self._pack, request, self.what)
            for _ in range(attempts):
                sock = self._sock
                if sock is None:
                    sock = self._sock = self._open()
                try:
                    if self._rcvtimeo != timeout_ms:
                        sock.rcvtimeo = self._rcvtimeo = timeout_ms
                    _send(sock, payload)
                    reply = sock.recv()  # Again after rcvtimeo: cheaper than a poll per call
                    break
                except zmq.ZMQError:
                    pass
                self._discard()  # Lazy Pirate: a REQ that lost its reply is stuck; start over
            else:
                raise unanswered(self.what, self.endpoint, attempts, timeout_ms)
        return _result(reply, self.what)

    def close(self) -> None:
        """Close the socket; idempotent."""
        with self._lock:
            self._closed = True
            self._discard()


def encoded(pack: Any, request: dict[str, Any], what: str) -> bytes:
    """``pack(request)``, or InvalidEvent naming the field that cannot be encoded (sync and asyncio)."""
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
    """The error of a request that got no reply after every attempt (sync and asyncio clients)."""
    return BusUnavailable(f"{what} at {endpoint} did not answer ({attempts} attempt(s), {timeout_ms / 1000:g}s each)")


def _result(reply: bytes, what: str) -> Any:
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
