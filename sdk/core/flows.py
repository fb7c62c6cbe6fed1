"""Flows: the SDK's operations of several I/O steps, written once, socket-free, and their two drivers.

A flow is a generator: it yields a step saying what I/O it needs (:class:`Ask` a server,
:class:`Receive` a delivered message, :class:`Filter` the subscription's socket, :class:`Sleep`, :class:`Work`: call a blocking local
function), is sent the step's result or has its error thrown into it, and returns its value.
:func:`drive` performs the steps with blocking I/O, :func:`drive_async` with asyncio; neither
holds any of the logic (httpx drives its auth flows the same way). The flows of subscribing and
reading the log are here and in :mod:`sdk.core.decoding` and :mod:`sdk.core.subscribing`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas.envelope import SYNC_PREFIX
from sdk.errors import BusTimeout, BusUnavailable

PAGE = 5_000
"""Rows asked for per log request (a replay, a gap fill, a catch-up)."""
LOG_WAIT = 0.005
"""Seconds between two looks at a log that has not yet reached the version we need."""

PING = {"op": "ping"}
"""The control request whose reply names the broker's ``version`` and ``first_version`` (its run)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ask:
    """Send ``request`` to the server named ``server`` (``"control"``: the broker, ``"log"``: the
    event log, ``"sessions"``: the session service) with its Lazy Pirate client; the result is the
    reply's ``result``. ``timeout`` and ``retries`` replace the client's own for this request."""

    server: str
    request: dict[str, Any]
    timeout: float | None = None
    retries: int | None = None


@dataclass(frozen=True, slots=True)
class Receive:
    """The next delivered message's frames, or None once ``time.monotonic()`` passes ``deadline``."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Filter:
    """Subscribe the subscription's socket to ``prefix`` (``on``), or unsubscribe it: a flow's own
    sync token (:func:`sync_token`), to prove in band what the broker has sent."""

    prefix: bytes
    on: bool


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (a flow polling the log's progress)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Work:
    """Call ``function()``, which blocks on something local (a file); the result is what it returns.
    The asyncio front runs it in a worker thread, so the event loop never waits on a disk."""

    function: Callable[[], Any]


Step = Ask | Receive | Filter | Sleep | Work
Flow = Generator[Any, Any, T]
"""A generator yielding steps (those above, or a front's own, such as the publisher's watch steps)
and returning a T."""

Servers = Callable[[str], Any]
"""The client (a ``Requester``, or an ``AsyncRequester`` in asyncio) of a server named in an Ask."""


def perform(step: Any, servers: Servers, io: Callable[[Any], Any] | None = None) -> Any:
    """Do one step with blocking I/O: an Ask, a Sleep or a Work here, any other step by ``io(step)``."""
    kind = type(step)
    if kind is Ask:
        return servers(step.server).call(step.request, timeout=step.timeout, retries=step.retries)
    if kind is Sleep:
        time.sleep(step.seconds)  # sync-ok: a flow polling the log's progress, bounded by its deadline
        return None
    if kind is Work:
        return step.function()
    if io is None:
        raise TypeError(f"no I/O for the step {step!r}")
    return io(step)


async def perform_async(step: Any, servers: Servers, io: Callable[[Any], Awaitable[Any]] | None = None) -> Any:
    """:func:`perform` in asyncio: the request and the sleep awaited, a Work in a worker thread."""
    kind = type(step)
    if kind is Ask:
        return await servers(step.server).call(step.request, timeout=step.timeout, retries=step.retries)
    if kind is Sleep:
        await asyncio.sleep(step.seconds)
        return None
    if kind is Work:
        return await asyncio.to_thread(step.function)
    if io is None:
        raise TypeError(f"no I/O for the step {step!r}")
    return await io(step)


def drive(flow: Flow[T], servers: Servers, io: Callable[[Any], Any] | None = None) -> T:
    """Run ``flow`` to its end with blocking I/O (:func:`perform`) and return its value.

    An error of a step is thrown into the flow, which decides what it means.

    Raises:
        Whatever the flow raises (a step's error it does not catch comes back out through it).
    """
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            result, error = perform(step, servers, io), None
        except Exception as e:
            result, error = None, e


async def drive_async(flow: Flow[T], servers: Servers, io: Callable[[Any], Awaitable[Any]] | None = None) -> T:
    """:func:`drive` for asyncio (:func:`perform_async`).

    Raises:
        Whatever the flow raises (a step's error it does not catch comes back out through it).
    """
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            result, error = await perform_async(step, servers, io), None
        except Exception as e:
            result, error = None, e


# -- the broker ------------------------------------------------------------------------------


def broker_epoch(reply: dict[str, Any]) -> int:
    """The broker's ``first_version`` in a ping reply: another value means another broker."""
    return int(reply.get("first_version", 1))


def broker_position(reply: dict[str, Any]) -> tuple[int, bool]:
    """The broker's current version in a ping reply, and whether it stamped anything since it started."""
    version = int(reply["version"])
    return version, version >= broker_epoch(reply)


SEQS_PATTERNS = 1000
SEQS_PATTERN_BYTES = 48 * 1024
"""Patterns per ``seqs`` request, in number and bytes: the broker decodes a control request of at
most 1,024 items and 64 KiB, and a subscription may have 10,000 patterns (schemas.topics)."""


def seqs_chunks(patterns: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """``patterns`` in groups that each fit one ``seqs`` request (one empty group for none: every topic)."""
    chunk: list[str] = []
    size = 0
    for pattern in patterns:
        length = len(pattern.encode("utf-8", "surrogatepass")) + 3  # msgpack's str header, at most
        if chunk and (len(chunk) == SEQS_PATTERNS or size + length > SEQS_PATTERN_BYTES):
            yield tuple(chunk)
            chunk, size = [], 0
        chunk.append(pattern)
        size += length
    yield tuple(chunk)


def seqs_request(patterns: tuple[str, ...], after: int = 0, session_id: str | None = None) -> dict[str, Any]:
    """The broker's ``seqs`` request: the current sequence of every topic matching ``patterns``,
    from the ``after``-th on (a page; the reply's ``next`` says where the next one starts); with
    ``session_id``, the sequences of that session's stream (PROTOCOL.md §5.1)."""
    request: dict[str, Any] = {"op": "seqs", "patterns": list(patterns)}
    if after:
        request["after"] = after
    if session_id is not None:
        request["session_id"] = session_id
    return request


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
) -> Flow[None]:
    """Page through a ``replay`` request, handing each page's rows (and how far the log scanned) to
    ``on_page``. With ``wait`` (and an ``until``), keep asking until the log has written up to it.

    Raises:
        BusTimeout: ``wait`` and the log did not reach ``until`` within ``timeout``.
        BusUnavailable: the event log did not answer (thrown in by the front).
    """
    request = dict(request)  # never the caller's
    deadline = time.monotonic() + timeout
    while True:
        result = yield Ask("log", request)
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
