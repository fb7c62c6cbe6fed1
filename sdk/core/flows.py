"""The cold paths of subscribing and reading the log, as flows that only *ask* for I/O.

A flow is a generator: it yields a step (:class:`Control`, :class:`Log`, :class:`Receive`,
:class:`Sleep`), is sent the step's result, or has the step's :class:`~sdk.errors.BusError` thrown
into it, and returns its value. The sync front drives flows with :func:`drive`, the asyncio front
with :func:`drive_async`; neither holds any of the logic (httpx drives its auth flows the same way).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas.envelope import SYNC_PREFIX
from sdk.errors import BusError, BusTimeout, BusUnavailable

PAGE = 5_000
"""Rows asked for per log request (a replay, a gap fill, a catch-up)."""
LOG_WAIT = 0.005
"""Seconds between two looks at a log that has not yet reached the version we need."""

PING = {"op": "ping"}
"""The control request whose reply names the broker's ``version`` and ``first_version`` (its run)."""


@dataclass(frozen=True, slots=True)
class Control:
    """Ask the broker's control endpoint ``request``; the result is the reply's ``result``."""

    request: dict[str, Any]
    timeout: float | None = None
    retries: int | None = None


@dataclass(frozen=True, slots=True)
class Log:
    """Ask the event log ``request``; the result is the reply's ``result``."""

    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Receive:
    """The next delivered message's frames, or None once ``time.monotonic()`` passes ``deadline``."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (a flow polling the log's progress)."""

    seconds: float


Step = Control | Log | Receive | Sleep
Flow = Generator[Step, Any, Any]
T = TypeVar("T")


def drive(flow: Generator[Step, Any, T], perform: Callable[[Step], Any]) -> T:
    """Run ``flow`` to its end, performing each step with the blocking ``perform``.

    A BusError from ``perform`` is thrown into the flow, which decides what it means.
    """
    result: Any = None
    error: BusError | None = None
    while True:
        try:
            step = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            result, error = perform(step), None
        except BusError as e:
            result, error = None, e


async def drive_async(flow: Generator[Step, Any, T], perform: Callable[[Step], Awaitable[Any]]) -> T:
    """:func:`drive` for asyncio: each step is awaited."""
    result: Any = None
    error: BusError | None = None
    while True:
        try:
            step = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            result, error = await perform(step), None
        except BusError as e:
            result, error = None, e


# -- the broker ------------------------------------------------------------------------------


def broker_epoch(reply: dict[str, Any]) -> int:
    """The broker's ``first_version`` in a ping reply: another value means another broker."""
    return int(reply.get("first_version", 1))


def broker_position(reply: dict[str, Any]) -> tuple[int, bool]:
    """The broker's current version in a ping reply, and whether it stamped anything since it started."""
    version = int(reply["version"])
    return version, version >= broker_epoch(reply)


def sync_token() -> bytes:
    """A fresh sync topic: the broker answers a subscription to it on the same connection."""
    return SYNC_PREFIX + uuid.uuid4().hex.encode()


# -- the event log ---------------------------------------------------------------------------


def replay_request(
    patterns: tuple[str, ...] = (),
    *,
    since: int = 0,
    until: int | None = None,
    session_id: str | None = None,
    ts_from: float | None = None,
    ts_until: float | None = None,
    page: int = PAGE,
) -> dict[str, Any]:
    """The log's ``replay`` request for ``since < version <= until`` (schemas/PROTOCOL.md)."""
    request: dict[str, Any] = {"op": "replay", "since": since, "limit": page}
    if patterns:
        request["patterns"] = list(patterns)
    for key, value in (("until", until), ("session_id", session_id), ("ts_from", ts_from), ("ts_until", ts_until)):
        if value is not None:
            request[key] = value
    return request


def tail_request(patterns: tuple[str, ...], *, limit: int, session_id: str | None = None) -> dict[str, Any]:
    """The log's ``tail`` request: the newest ``limit`` events matching."""
    request: dict[str, Any] = {"op": "tail", "limit": limit, "patterns": list(patterns)}
    if session_id is not None:
        request["session_id"] = session_id
    return request


def log_pages(
    request: dict[str, Any], *, wait: bool, timeout: float, on_page: Callable[[list[Any], int], None]
) -> Generator[Step, Any, None]:
    """Page through a ``replay`` request, handing each page's rows (and how far the log scanned) to
    ``on_page``. With ``wait`` (and an ``until``), keep asking until the log has written up to it.

    Raises:
        BusTimeout: ``wait`` and the log did not reach ``until`` within ``timeout``.
        BusUnavailable: the event log did not answer (thrown in by the front).
    """
    request = dict(request)  # never the caller's
    deadline = time.monotonic() + timeout
    while True:
        result = yield Log(request)
        on_page(result["events"], result["next"])
        if result["done"]:
            return
        request["since"] = result["next"]
        if result["events"] or not result.get("exhausted", True):
            continue
        # The scan reached the end of what the log holds, short of ``until``.
        if not wait:
            return
        if time.monotonic() >= deadline:
            raise BusTimeout(
                f"the event log reached version {result['last']}, not {request.get('until')}, within {timeout:g}s"
            )
        yield Sleep(LOG_WAIT)


def unconfirmed(endpoint: str, timeout: float) -> BusUnavailable:
    """The error when the broker did not answer a subscription's sync token in time."""
    return BusUnavailable(
        f"the broker at {endpoint} did not confirm the subscription within {timeout:g}s (is it running?)"
    )
