"""The event log for asyncio: replay, ``since=``, ``policy="recover"`` and session archives.

Log requests are cold-path round trips, so the asyncio Bus runs the sync implementation
(:mod:`sdk.replay`, :mod:`sdk.session_archive`) in worker threads, with sync clients on a shadow of
its own ZeroMQ context (:class:`LogSide`); the event loop never blocks on the log. A recovering
subscription learns of a gap inside its (sync) decoder: in asyncio the decoder raises
:class:`GapFound` instead of fetching, and the subscription awaits the fetch in a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from schemas.endpoints import Endpoints
from sdk import replay as sync_replay
from sdk.errors import BusTimeout, BusUnavailable, SlowSubscriberError
from sdk.event import Event
from sdk.request import Requester

if TYPE_CHECKING:
    from sdk.aio_subscription import Subscription
    from sdk.sessions import SessionClient


class LogSide:
    """Sync clients of the broker's control endpoint, the event log and the session service, for
    worker threads. Shares the asyncio Bus's context (a shadow); closes only its own sockets."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoints: Endpoints, *, timeout: float) -> None:
        self._ctx = zmq.Context.shadow(ctx.underlying)
        for option, value in ctx.sockopts.items():  # a shadow does not inherit them (CURVE, heartbeats)
            self._ctx.setsockopt(option, value)
        self.endpoints = endpoints
        self.timeout = timeout
        self._lock = threading.Lock()
        self.control = Requester(self._ctx, endpoints.control, timeout=timeout, retries=1, what="broker")
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
        self.control.close()
        if self._log is not None:
            self._log.close()
        if self._sessions is not None:
            self._sessions.close()


async def replay(side: LogSide, patterns: tuple[str, ...], **options: Any) -> AsyncIterator[Event]:
    """Logged events in version order; each page is fetched in a worker thread."""
    rows = sync_replay.iter_rows(side.log, patterns=patterns, **options)
    while True:
        page = await asyncio.to_thread(lambda: list(islice(rows, sync_replay.PAGE)))
        for row in page:
            yield sync_replay.decode_row(row)
        if len(page) < sync_replay.PAGE:
            return


async def attach_history(sub: Subscription, side: LogSide, since: int, *, timeout: float) -> None:
    """The ``since=`` seam for an asyncio subscription (see :func:`sdk.replay.attach_history`)."""
    await asyncio.to_thread(sync_replay.attach_history, sub, side, since, timeout=timeout)  # type: ignore[arg-type]


class GapFound(Exception):
    """Raised by an asyncio RecoveringDecoder: versions ``after+1 .. through`` must be fetched."""

    def __init__(self, after: int, through: int) -> None:
        super().__init__(after, through)
        self.after = after
        self.through = through


def recovering_decoder(patterns: tuple[str, ...], side: LogSide, pending: deque[Event]) -> sync_replay.RecoveringDecoder:
    """A RecoveringDecoder whose fetch raises GapFound (the subscription awaits :func:`fill`)."""

    def fetch(after: int, through: int) -> list[Event]:
        raise GapFound(after, through)

    decoder = sync_replay.RecoveringDecoder(patterns, fetch, pending)
    decoder.side = side  # type: ignore[attr-defined]
    return decoder


async def fill(sub: Subscription, gap: GapFound, frames: list[bytes]) -> None:
    """Fetch a gap in a worker thread, then hand the decoder the events and the revealing frames
    (again: in a run, the events before the gap were taken already and are skipped by version)."""
    decoder = sub._decoder
    side: LogSide = decoder.side  # type: ignore[attr-defined]
    try:
        recovered = await asyncio.to_thread(
            lambda: list(
                sync_replay.replay(
                    side.log, patterns=sub.patterns, since=gap.after, until=gap.through, wait=True, timeout=side.timeout
                )
            )
        )
    except (BusTimeout, BusUnavailable) as e:
        lost = gap.through - gap.after
        decoder.lost += lost
        raise SlowSubscriberError(lost, frames[0].decode("utf-8", "replace")) from e
    original = decoder.fetch
    decoder.fetch = lambda after, through: recovered
    try:
        decoder.feed(*frames, sub._pending.append)
    finally:
        decoder.fetch = original


async def catch_up(sub: Subscription) -> Event | None:
    """Idle asyncio recovering subscription: fetch what the broker stamped after our last event."""
    decoder = sub._decoder
    side: LogSide = decoder.side  # type: ignore[attr-defined]

    def work() -> Event | None:
        decoder.position = lambda: sync_replay.broker_position(side)  # type: ignore[arg-type]
        original = decoder.fetch
        decoder.fetch = lambda after, through: list(
            sync_replay.replay(side.log, patterns=sub.patterns, since=after, until=through, wait=True, timeout=side.timeout)
        )
        try:
            return decoder.catch_up()
        finally:
            decoder.fetch = original

    return await asyncio.to_thread(work)

