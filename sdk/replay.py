"""Reading the event log, sync front: replay pages and the newest events, over :class:`sdk.request.Requester`.

The event log answers ``replay`` requests in pages of ``[version, topic_seq, type, body]`` rows
(``schemas/PROTOCOL.md``); the paging is the core's flow :func:`sdk.core.flows.log_pages`, which
this module drives with blocking requests. The ``since=`` seam and ``policy="recover"`` live in
:mod:`sdk.core` too, driven by :class:`sdk.subscription.Subscription`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import zmq

from sdk.core.decoding import event_of_row
from sdk.core.flows import PAGE, Log, Sleep, Step, log_pages, replay_request, tail_request
from sdk.errors import BusUnavailable
from sdk.event import Event
from sdk.request import Requester

__all__ = ["PAGE", "decode_row", "iter_rows", "log_client", "replay", "tail"]

decode_row = event_of_row
"""An Event from one log row ``[version, topic_seq, type, body]``."""


def log_client(ctx: zmq.Context, endpoint: str, *, timeout: float) -> Requester:
    """A Lazy Pirate client for the event log (every log request is a read, or idempotent).

    Raises:
        BusUnavailable: the stack has no event log endpoint.
    """
    if not endpoint:
        raise BusUnavailable("this stack has no event log endpoint")
    return Requester(ctx, endpoint, timeout=timeout, retries=2, what="event log")


def iter_rows(
    log: Requester,
    *,
    patterns: tuple[str, ...] = (),
    since: int = 0,
    until: int | None = None,
    session_id: str | None = None,
    ts_from: float | None = None,
    ts_until: float | None = None,
    wait: bool = False,
    timeout: float = 5.0,
    page: int = PAGE,
) -> Iterator[list[Any]]:
    """Raw log rows with ``since < version <= until`` matching the filters, in version order,
    fetched a page at a time as they are consumed.

    With ``wait`` (and an ``until``), keep asking until the log has written up to ``until``.

    Raises:
        BusTimeout: ``wait`` and the log did not reach ``until`` within ``timeout``.
        BusUnavailable: the event log did not answer.
    """
    request = replay_request(
        patterns, since=since, until=until, session_id=session_id, ts_from=ts_from, ts_until=ts_until, page=page
    )
    rows: list[list[Any]] = []
    flow = log_pages(request, wait=wait, timeout=timeout, on_page=lambda page_rows, _next: rows.extend(page_rows))
    step: Step | None = next(flow)
    while step is not None:
        if type(step) is Log:
            reply = log.call(step.request)
        else:
            assert isinstance(step, Sleep)
            time.sleep(step.seconds)  # sync-ok: polling the log's progress, bounded by the flow's deadline
            reply = None
        try:
            step = flow.send(reply)
        except StopIteration:
            step = None
        yield from rows
        rows.clear()


def replay(log: Requester, **options: Any) -> Iterator[Event]:
    """Events from :func:`iter_rows` (same options), decoded."""
    for row in iter_rows(log, **options):
        yield event_of_row(row)


def tail(log: Requester, patterns: tuple[str, ...], *, limit: int, session_id: str | None = None) -> list[Event]:
    """The newest ``limit`` logged events matching, oldest first.

    Raises:
        BusUnavailable: the event log did not answer.
    """
    return [event_of_row(row) for row in log.call(tail_request(patterns, limit=limit, session_id=session_id))["events"]]
