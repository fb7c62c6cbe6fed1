"""The session client: ``bus.sessions.create/get/list/ensure/rename/touch/delete`` over REQ/REP.

Requests are built and replies parsed by pure functions (:class:`SessionCalls`), shared by this
synchronous client and the asyncio one (``sdk/aio_sessions.py``); only the I/O differs.
The operations that also read the event log (resume, export, import, a session's stats) are
flows (``sdk/session_archive.py``) that each client drives with its own I/O. Both retry with the
Lazy Pirate pattern (``sdk/request.py``), and every request is safe to retry:
``create`` carries a client-made UUIDv4, and writes carry a request id whose reply the service
remembers, so a retry never applies a change twice.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import zmq

from schemas.endpoints import Endpoints
from schemas.sessions import (
    CODES,
    MAX_LIST_LIMIT,
    NOT_FOUND,
    ProtocolError,
    check_id,
    check_limit,
    check_offset,
    check_title,
    parse_ts,
)
from sdk.errors import BusError, BusUnavailable, RemoteError, SessionError, SessionNotFound
from sdk.event import Session
from sdk.core.flows import drive
from sdk.request import Requester

if TYPE_CHECKING:
    from sdk.session_archive import SessionHistory

T = TypeVar("T")

DEFAULT_RETRIES = 2
"""Attempts after the first before ``BusUnavailable`` (each waits ``timeout`` seconds)."""


@dataclass(frozen=True)
class SessionPage:
    """One page of ``list``: the sessions, and the cursor of the next page (None on the last)."""

    sessions: tuple[Session, ...]
    next_cursor: str | None


class Call(NamedTuple, Generic[T]):
    """A request ready to send and the function that turns its reply's result into a value."""

    request: dict[str, Any]
    parse: Callable[[Any], T]


def to_session(data: Any) -> Session:
    """A Session from the wire form (a map of four strings).

    Raises:
        RemoteError: the service sent something else (code ``bad_reply``).
    """
    try:
        return Session(data["id"], data["title"], parse_ts(data["created_at"]), parse_ts(data["updated_at"]))
    except (TypeError, KeyError, ValueError) as e:
        raise RemoteError(f"the session service sent a malformed session: {e}", "bad_reply") from None


def _to_page(data: Any) -> SessionPage:
    try:
        return SessionPage(tuple(to_session(s) for s in data["sessions"]), data.get("next_cursor"))
    except (TypeError, KeyError, AttributeError) as e:
        raise RemoteError(f"the session service sent a malformed page: {e}", "bad_reply") from None


def _to_list(data: Any) -> list[Session]:
    return list(_to_page(data).sessions)


def _rid() -> str:
    return uuid.uuid4().hex


def refused(e: ProtocolError | RemoteError) -> SessionError:
    """The SDK exception for a request the service (or the client's own check) refused."""
    code = e.code
    message = e.message if isinstance(e, ProtocolError) else str(e)
    if code == NOT_FOUND:
        return SessionNotFound(message)
    return SessionError(message, code)


class SessionCalls:
    """Pure request builders: validate arguments, build the request map and its reply parser.

    Raises (every builder):
        SessionError: an argument the service would refuse (``code`` ``bad_request``/``too_long``).
    """

    @staticmethod
    def _checked(build: Callable[[], Call[T]]) -> Call[T]:
        try:
            return build()
        except ProtocolError as e:
            raise refused(e) from None

    @classmethod
    def create(cls, title: str, session_id: str | None = None) -> Call[Session]:
        return cls._checked(lambda: Call(
            {"op": "create", "id": check_id(session_id) if session_id is not None else str(uuid.uuid4()),
             "title": check_title(title), "rid": _rid()},
            to_session,
        ))

    @classmethod
    def get(cls, session_id: str) -> Call[Session]:
        return cls._checked(lambda: Call({"op": "get", "id": check_id(session_id)}, to_session))

    @classmethod
    def list(cls, limit: int = MAX_LIST_LIMIT, offset: int = 0) -> Call[list[Session]]:
        return cls._checked(lambda: Call(
            {"op": "list", "limit": check_limit(limit), "offset": check_offset(offset)}, _to_list
        ))

    @classmethod
    def page(cls, limit: int = MAX_LIST_LIMIT, cursor: str | None = None, offset: int = 0) -> Call[SessionPage]:
        def build() -> Call[SessionPage]:
            request: dict[str, Any] = {"op": "list", "limit": check_limit(limit)}
            if cursor is not None:
                request["cursor"] = cursor
            if offset:  # the service refuses a cursor and an offset together
                request["offset"] = check_offset(offset)
            return Call(request, _to_page)

        return cls._checked(build)

    @classmethod
    def ensure(cls, session_id: str, title: str) -> Call[Session]:
        return cls._checked(lambda: Call(
            {"op": "ensure", "id": check_id(session_id), "title": check_title(title), "rid": _rid()},
            to_session,
        ))

    @classmethod
    def rename(cls, session_id: str, title: str) -> Call[Session]:
        return cls._checked(lambda: Call(
            {"op": "rename", "id": check_id(session_id), "title": check_title(title), "rid": _rid()},
            to_session,
        ))

    @classmethod
    def touch(cls, session_id: str) -> Call[Session]:
        return cls._checked(lambda: Call({"op": "touch", "id": check_id(session_id), "rid": _rid()}, to_session))

    @classmethod
    def delete(cls, session_id: str) -> Call[Session]:
        return cls._checked(lambda: Call({"op": "delete", "id": check_id(session_id), "rid": _rid()}, to_session))

    @classmethod
    def restore(cls, session: dict[str, str], overwrite: bool = False) -> Call[Session]:
        return cls._checked(lambda: Call(
            {"op": "restore", "session": session, "overwrite": overwrite, "rid": _rid()}, to_session
        ))

    @staticmethod
    def ping() -> Call[dict[str, Any]]:
        return Call({"op": "ping"}, dict)

    @staticmethod
    def stats() -> Call[dict[str, Any]]:
        return Call({"op": "stats"}, dict)


def translated(e: RemoteError) -> BusError:
    """The exception to raise for a server error: a SessionError for the session codes, else ``e``.

    Shared by the sync and asyncio clients.
    """
    return refused(e) if e.code in CODES else e


class SessionClient:
    """Sessions in the session service of a stack. Thread-safe. Usually reached as ``bus.sessions``.

    Each call waits ``timeout`` seconds for a reply, then rebuilds its socket and retries, at most
    ``retries`` times, then raises ``BusUnavailable``: it never hangs.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        *,
        timeout: float = 5.0,
        retries: int = DEFAULT_RETRIES,
        log: Callable[[], Requester] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._log = log  # the event log client, for resume/export/import_/stats(id) (sdk/session_archive.py)
        self._requester = Requester(ctx, endpoint, timeout=timeout, retries=retries, what="session service")
        self._own_ctx: zmq.Context | None = None

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | Endpoints | None = None,
        *,
        timeout: float = 5.0,
        retries: int = DEFAULT_RETRIES,
        curve: Any = None,
    ) -> SessionClient:
        """A standalone client (its own context) for the stack in ``home`` or at ``tcp://HOST:PORT``.

        Needs only the session service, not the broker. ``curve`` as in :func:`sdk.connect`.

        Raises:
            InvalidEvent: ``home`` is not a home directory or ``tcp://HOST:PORT``.
            BusUnavailable: CURVE keys were asked for and cannot be loaded.
        """
        from sdk.bus import resolve_endpoints
        from sdk.security import resolve_client_keys, secure_client_context

        endpoints = resolve_endpoints(home)
        ctx = secure_client_context(zmq.Context(), resolve_client_keys(curve, home))
        client = cls(ctx, endpoints.sessions, timeout=timeout, retries=retries)
        client._own_ctx = ctx
        return client

    def _do(self, call: Call[T], **options: Any) -> T:
        try:
            result = self._requester.call(call.request, **options)
        except RemoteError as e:
            raise translated(e) from None
        return call.parse(result)

    def create(self, title: str, *, id: str | None = None) -> Session:
        """Create a session (with a new UUIDv4 id unless ``id`` is given).

        Raises:
            SessionError: a title over the limit (``too_long``) or not a str (``bad_request``); an
                ``id`` that exists with another title (``conflict``, a SessionConflict code).
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.create(title, id))

    def get(self, id: str) -> Session:
        """The session with this id.

        Raises:
            SessionNotFound: no session has this id.
            BusUnavailable: the session service did not answer.
        """
        try:  # SessionCalls.get, inlined: the hottest call
            request = {"op": "get", "id": check_id(id)}
        except ProtocolError as e:
            raise refused(e) from None
        try:
            result = self._requester.call(request)
        except RemoteError as e:
            raise translated(e) from None
        return to_session(result)

    def list(self, limit: int = MAX_LIST_LIMIT, *, offset: int = 0) -> list[Session]:
        """Sessions, most recently updated first (ties by id, descending), at most 100 per call.

        Raises:
            SessionError: ``limit`` < 1 or ``offset`` < 0 (``bad_request``).
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.list(limit, offset))

    def page(self, limit: int = MAX_LIST_LIMIT, *, cursor: str | None = None, offset: int = 0) -> SessionPage:
        """One page of ``list``, with the cursor of the next (stable while sessions change).

        Start after ``cursor`` (a previous page's ``next_cursor``) or skip ``offset`` sessions, not both.

        Raises:
            SessionError: a cursor that did not come from ``page``, or both given (``bad_request``).
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.page(limit, cursor, offset))

    def iterate(self, *, page_size: int = MAX_LIST_LIMIT) -> Iterator[Session]:
        """Every session, page by page, most recently updated first.

        Raises:
            BusUnavailable: the session service did not answer.
        """
        cursor = None
        while True:
            page = self.page(page_size, cursor=cursor)
            yield from page.sessions
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def ensure(self, id: str, title: str) -> Session:
        """The session with this id, created with ``title`` if missing; its title never changes.

        Touches ``updated_at`` either way.

        Raises:
            SessionError: an invalid id or title.
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.ensure(id, title))

    def rename(self, id: str, title: str) -> Session:
        """Set the session's title (and touch ``updated_at``).

        Raises:
            SessionNotFound: no session has this id.
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.rename(id, title))

    def touch(self, id: str) -> Session:
        """Set the session's ``updated_at`` to now.

        Raises:
            SessionNotFound: no session has this id.
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.touch(id))

    def delete(self, id: str) -> Session:
        """Delete the session; returns it as it was.

        Raises:
            SessionNotFound: no session has this id.
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.delete(id))

    def ping(self, *, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """The service's pid and schema version (a health check).

        Raises:
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.ping(), timeout=timeout, retries=retries)

    def stats(self, id: str | None = None) -> dict[str, Any]:
        """Without ``id``: the service's counters (requests per op, errors per code, events
        published/dropped). With ``id``: that session's analytics from the event log — ``events``,
        ``by_type``, ``messages``, ``first_activity``, ``last_activity``, ``duration`` (seconds).

        Raises:
            SessionNotFound: no session has this id.
            BusUnavailable: the session service (or, with ``id``, the event log) did not answer.
        """
        if id is None:
            return self._do(SessionCalls.stats())
        from sdk import session_archive

        return drive(session_archive.session_stats(id), self._server)

    # -- with the event log (issue 4): flows of sdk/session_archive.py ----------------------

    def _server(self, name: str) -> Requester:
        if name == "sessions":
            return self._requester
        if self._log is None:
            raise BusUnavailable("this session client has no event log; use bus.sessions from sdk.connect()")
        return self._log()

    def restore(self, session: dict[str, str], *, overwrite: bool = False) -> Session:
        """Put back a session exactly as exported (timestamps too); emits no event.

        Raises:
            SessionConflict: a different session has this id and ``overwrite`` is false.
            BusUnavailable: the session service did not answer.
        """
        return self._do(SessionCalls.restore(session, overwrite))

    def resume(self, id: str) -> SessionHistory:
        """The session and its logged events (``sdk.session_archive.SessionHistory``), to carry on
        a conversation after a crash: ``bus.subscribe(..., since=history.version)`` continues it.

        Raises:
            SessionNotFound: no session has this id.
            BusUnavailable: the session service or the event log did not answer.
        """
        from sdk import session_archive

        return drive(session_archive.resume(id), self._server)

    def export(self, id: str, path: str | os.PathLike[str]) -> int:
        """Write the session and its events to ``path`` (JSON Lines); returns how many events.

        Raises:
            SessionNotFound: no session has this id.
            BusUnavailable: the session service or the event log did not answer.
        """
        from sdk import session_archive

        return drive(session_archive.export(id, path), self._server)

    def import_(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Session:
        """Restore a session and its events from an export file. Idempotent.

        Raises:
            InvalidEvent: the file is not a session export.
            SessionConflict: a different session has this id (pass ``overwrite=True`` to replace
                it), or the log holds other events under the file's versions.
            BusUnavailable: the session service or the event log did not answer.
        """
        from sdk import session_archive

        return drive(session_archive.import_(path, overwrite=overwrite), self._server)

    def close(self) -> None:
        """Close the socket (and the context if :meth:`open` made it); idempotent."""
        self._requester.close()
        if self._own_ctx is not None:
            self._own_ctx.term()
            self._own_ctx = None

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Call", "SessionCalls", "SessionClient", "SessionPage", "to_session", "translated"]
