"""Reading the event log, asyncio front: replay pages and the newest events, awaited natively.

The paging is the core's flow :func:`sdk.core.flows.log_pages`, driven here with an
:class:`sdk.aio_sessions.AsyncRequester`. :class:`LogSide` keeps sync clients for the one cold path
still run in worker threads: the session archive (export, import, resume).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from schemas.endpoints import Endpoints
from sdk import replay as sync_replay
from sdk.aio_sessions import AsyncRequester
from sdk.core.decoding import event_of_row
from sdk.core.flows import Log, Sleep, log_pages, replay_request, tail_request
from sdk.errors import BusUnavailable
from sdk.event import Event
from sdk.request import Requester

if TYPE_CHECKING:
    from sdk.aio import Bus
    from sdk.sessions import SessionClient


def log_client(ctx: zmq.asyncio.Context, endpoint: str, *, timeout: float) -> AsyncRequester:
    """An asyncio Lazy Pirate client for the event log (every log request is a read, or idempotent).

    Raises:
        BusUnavailable: the stack has no event log endpoint.
    """
    if not endpoint:
        raise BusUnavailable("this stack has no event log endpoint")
    return AsyncRequester(ctx, endpoint, timeout=timeout, retries=2, what="event log")


async def replay(
    bus: Bus, *, patterns: tuple[str, ...], wait: bool = False, timeout: float = 5.0, **filters: Any
) -> AsyncIterator[Event]:
    """Logged events in version order (the options of :func:`sdk.replay.iter_rows`), a page per request.

    Raises:
        BusUnavailable: the event log did not answer.
        BusTimeout: ``wait`` and the log did not reach ``until`` within ``timeout``.
    """
    log = bus.log
    rows: list[list[Any]] = []
    flow = log_pages(
        replay_request(patterns, **filters),
        wait=wait,
        timeout=timeout,
        on_page=lambda page, _next: rows.extend(page),
    )
    step = next(flow)
    while True:
        if type(step) is Log:
            reply = await log.call(step.request)
        else:
            assert isinstance(step, Sleep)
            await asyncio.sleep(step.seconds)
            reply = None
        try:
            step = flow.send(reply)
        except StopIteration:
            step = None
        for row in rows:
            yield event_of_row(row)
        rows.clear()
        if step is None:
            return


async def tail(log: AsyncRequester, patterns: tuple[str, ...], *, limit: int, session_id: str | None = None) -> list[Event]:
    """The newest ``limit`` logged events matching, oldest first.

    Raises:
        BusUnavailable: the event log did not answer.
    """
    reply = await log.call(tail_request(patterns, limit=limit, session_id=session_id))
    return [event_of_row(row) for row in reply["events"]]


class LogSide:
    """Sync clients of the event log and the session service, for the session archive's worker
    threads. Shares the asyncio Bus's context (a shadow); closes only its own sockets."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoints: Endpoints, *, timeout: float) -> None:
        self._ctx = zmq.Context.shadow(ctx.underlying)
        for option, value in ctx.sockopts.items():  # a shadow does not inherit them (CURVE, heartbeats)
            self._ctx.setsockopt(option, value)
        self.endpoints = endpoints
        self.timeout = timeout
        self._lock = threading.Lock()
        self._log: Requester | None = None
        self._sessions: SessionClient | None = None

    @property
    def log(self) -> Requester:
        with self._lock:
            if self._log is None:
                self._log = sync_replay.log_client(self._ctx, self.endpoints.log, timeout=self.timeout)
            return self._log

    @property
    def sessions(self) -> SessionClient:
        from sdk.sessions import SessionClient

        with self._lock:
            if self._sessions is None:
                self._sessions = SessionClient(
                    self._ctx, self.endpoints.sessions, timeout=self.timeout, log=lambda: self.log
                )
            return self._sessions

    def close(self) -> None:
        """Close the sockets (call once no worker thread uses them)."""
        if self._log is not None:
            self._log.close()
        if self._sessions is not None:
            self._sessions.close()
