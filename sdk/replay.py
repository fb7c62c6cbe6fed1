"""Reading the event log lazily, for both fronts: ``bus.replay()`` as an iterator and an async iterator.

The event log answers ``replay`` requests in pages of ``[version, topic_seq, type, body]`` rows
(``schemas/PROTOCOL.md``); the paging is the core's flow :func:`sdk.core.flows.log_pages`. A replay
hands out each page's events before it asks for the next, so the flow is driven here one step at a
time (:func:`replay` with a blocking requester, :func:`areplay` with an asyncio one) instead of to
its end. :func:`log_client` makes the event log's requester for either front.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import zmq

from sdk.core.decoding import event_of_row
from sdk.core.flows import PAGE, log_pages, perform, perform_async, replay_request
from sdk.errors import BusUnavailable
from sdk.event import Event

__all__ = ["PAGE", "areplay", "log_client", "replay"]

R = TypeVar("R")

LOG_RETRIES = 2
"""Attempts after the first for a log request (every one is a read, or idempotent)."""


def log_client(requester: type[R], ctx: zmq.Context, endpoint: str, *, timeout: float) -> R:
    """The event log's Lazy Pirate client: ``requester`` is ``sdk.request.Requester`` or ``AsyncRequester``.

    Raises:
        BusUnavailable: the stack has no event log endpoint.
    """
    if not endpoint:
        raise BusUnavailable("this stack has no event log endpoint")
    return requester(ctx, endpoint, timeout=timeout, retries=LOG_RETRIES, what="event log")  # type: ignore[call-arg]


def replay(log: Any, patterns: tuple[str, ...] = (), *, wait: bool = False, timeout: float = 5.0, **filters: Any) -> Iterator[Event]:
    """Logged events with ``since < version <= until`` matching the filters (those of
    :func:`sdk.core.flows.replay_request`), in version order, a page fetched as they are consumed.
    With ``wait`` (and an ``until``), keep asking until the log has written up to ``until``.

    Raises:
        BusTimeout: ``wait`` and the log did not reach ``until`` within ``timeout``.
        BusUnavailable: the event log did not answer.
    """
    rows: list[list[Any]] = []
    flow = log_pages(replay_request(patterns, **filters), wait=wait, timeout=timeout, on_page=lambda page, _: rows.extend(page))
    result = None
    while True:
        try:
            step = flow.send(result)
        except StopIteration:
            step = None
        for row in rows:
            yield event_of_row(row)
        rows.clear()
        if step is None:
            return
        result = perform(step, lambda _server: log)


async def areplay(
    log: Any, patterns: tuple[str, ...] = (), *, wait: bool = False, timeout: float = 5.0, **filters: Any
) -> AsyncIterator[Event]:
    """:func:`replay` for asyncio, over an ``AsyncRequester``.

    Raises:
        BusTimeout: ``wait`` and the log did not reach ``until`` within ``timeout``.
        BusUnavailable: the event log did not answer.
    """
    rows: list[list[Any]] = []
    flow = log_pages(replay_request(patterns, **filters), wait=wait, timeout=timeout, on_page=lambda page, _: rows.extend(page))
    result = None
    while True:
        try:
            step = flow.send(result)
        except StopIteration:
            step = None
        for row in rows:
            yield event_of_row(row)
        rows.clear()
        if step is None:
            return
        result = await perform_async(step, lambda _server: log)
