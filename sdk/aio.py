"""The asyncio Bus: the sync API of ``sdk.Bus`` with ``await``, over ``zmq.asyncio``.

>>> import sdk.aio
>>> async def main():
...     async with sdk.aio.connect(name="agent") as bus:          # or: bus = await sdk.aio.connect()
...         async with bus.subscribe("channel:*") as sub:          # or: sub = await bus.subscribe()
...             await bus.publish("channel:message", {"text": "hi"})
...             async for ev in sub:
...                 print(ev.version, ev.type, ev.payload)
...                 break

The rules (types, patterns, size limit, publisher handshake and watch, loss detection and
recovery, sessions, replay, Lazy Pirate) are those of the sync SDK, written once: ``sdk.wire``,
the core in ``sdk.core``, ``sdk.request``, ``sdk.replay`` and ``sdk.session_archive``; this module
does only the asyncio I/O.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq
import zmq.asyncio

from schemas.endpoints import Endpoints
from schemas.envelope import BATCH_PREFIX
from sdk.transport import configure_context
from sdk.wire import (
    SIZE_QUESTION,
    pending_messages,
    check_subscription,
    configure_publisher,
    publish_timed_out,
    publisher_unavailable,
    size_limit,
)
from sdk.aio_eventlog import EventLogReading
from sdk.aio_sessions import AsyncSessionClient
from sdk.aio_subscription import Pending, Subscription
from sdk.filters import Where, event_filter
from sdk.bus import DEFAULT_HWM, resolve_endpoints, stream_wanted
from sdk.spare_cpu import CONFIRM_SPIN, spin_looks
from sdk.errors import BusClosed, BusError, InvalidEvent, MessageTooLarge, translate
from sdk.core.flows import drive_async
from sdk.core.publishing import (
    DEFAULT_PUBLISH_BUFFER,
    IDENTITY_SIZE,
    LOOK,
    RECONNECTED,
    WATCH_INTERVAL,
    Outgoing,
    PublisherCore,
    Resend,
    WaitForBroker,
)
from sdk.request import AsyncRequester
from sdk.security import KeyPaths, resolve_client_keys, secure_client_context
from sdk.core.decoding import Policy

__all__ = ["Bus", "Subscription", "connect"]

_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_DONTWAIT = int(zmq.DONTWAIT)
_ROOM_PAUSE_MAX = 0.01
"""Longest pause between two tries of a publish waiting for room in a full queue (seconds)."""

ASYNC_POLICIES = ("drop", "count", "recover")
"""Policies of asyncio subscriptions (all of the sync SDK's)."""


class Bus(EventLogReading, PublisherCore):
    """A connection to a running pryxbus stack, for asyncio. Create with :func:`sdk.aio.connect`.

    Use it from one event loop; concurrent tasks may publish, subscribe and call sessions.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | Endpoints | None = None,
        *,
        name: str = "component",
        timeout: float = 5.0,
        publish_timeout: float = 10.0,
        hwm: int = DEFAULT_HWM,
        validate: bool = False,
        max_event_size: int | None = None,
        curve: bool | KeyPaths | None = None,
        publish_buffer: int = DEFAULT_PUBLISH_BUFFER,
        spin: float = CONFIRM_SPIN,
    ) -> None:
        self.endpoints = resolve_endpoints(home)
        self.curve = resolve_client_keys(curve, home)
        """The CURVE client keys every socket of this bus uses, or None (plain)."""
        self._init_publisher(
            name=name,
            publish_timeout=publish_timeout,
            validate=validate,
            max_event_size=max_event_size,
            publish_buffer=publish_buffer,
            spin=spin,
        )
        self.timeout = timeout
        self.hwm = hwm
        self._ctx = secure_client_context(configure_context(zmq.asyncio.Context(), self.endpoints), self.curve)
        self._publisher: zmq.asyncio.Socket | None = None
        self._pub: zmq.asyncio.Socket | None = None
        """The publisher as publish sees it: None until it is open, and while the watch runs
        (publish then waits for ``_pub_lock``)."""
        self._looks: zmq.Socket | None = None  # a sync shadow of the publisher, for non-blocking reads
        self._monitor: zmq.asyncio.Socket | None = None  # the publisher's monitor (its connections)
        self._handshakes: zmq.Socket | None = None  # and its sync shadow
        self._pub_lock = asyncio.Lock()
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        self.control = AsyncRequester(
            self._ctx, self.endpoints.control, timeout=timeout, retries=1, what="broker"
        )
        self._sessions: AsyncSessionClient | None = None
        self._log: AsyncRequester | None = None

    async def _start(self) -> Bus:
        """Ask the broker for its event size limit (this also proves it is there)."""
        if self._asked_size:
            try:
                self.max_event_size = size_limit(await self.control.call(SIZE_QUESTION))
            except BaseException:
                await self.close()
                raise
        return self

    # -- publishing --------------------------------------------------------------------------

    async def _ready_publisher(self, now: float) -> zmq.asyncio.Socket:
        """The publisher, opened if it is not yet, after the broker watch if a look is due.

        Other tasks' publishes wait meanwhile (``_pub`` is None), so none sends into an XPUB the
        broker has left, where it would be dropped.

        Raises:
            BusUnavailable: the broker's subscription did not reach a new publisher in time.
            PublishTimeout: the broker was gone and did not come back within ``publish_timeout``.
            BusClosed: the bus was closed.
        """
        async with self._pub_lock:
            if self._closed:
                raise BusClosed("bus is closed")
            sock = self._publisher
            if sock is None:
                sock = await self._open_publisher()
            if now >= self._watch_at:
                self._watch_at = now + WATCH_INTERVAL
                if sock.getsockopt(_EVENTS) & _POLLIN:
                    await self._drive_locked(sock, self._watch())
            return sock

    async def _drive_locked(self, sock: zmq.asyncio.Socket, flow: Any) -> Any:
        """Drive a publisher flow (``_pub_lock`` held) while publishes wait (``_pub`` is None), so
        none sends before the events it re-sends, or into an XPUB the broker has left."""
        self._pub = None
        try:
            return await drive_async(flow, self._server, self._watch_io)
        finally:
            self._pub = sock

    async def _drive_publisher(self, flow: Any) -> Any:
        """Drive a publisher flow that waits for confirmations, the publisher open.

        Raises:
            BusClosed: the bus was closed.
        """
        async with self._pub_lock:
            if self._closed:
                raise BusClosed("bus is closed")
            sock = self._publisher
            if sock is None:
                sock = await self._open_publisher()
            return await self._drive_locked(sock, flow)

    async def _open_publisher(self) -> zmq.asyncio.Socket:
        """Connect the publisher and wait until the broker's subscription arrives (trap §4.1)."""
        sock = self._ctx.socket(zmq.XPUB)
        configure_publisher(sock, timeout=self.timeout, publish_timeout=self.publish_timeout, hwm=self.hwm)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            sock.connect(self.endpoints.publish)
            if not await sock.poll(int(self.timeout * 1000), _POLLIN):
                raise publisher_unavailable(self.endpoints.publish, self.timeout)
            await sock.recv()  # the broker's subscription
        except BaseException:
            monitor.close(linger=0)
            sock.close(linger=0)
            raise
        self._publisher = self._pub = sock
        self._looks = zmq.Socket.shadow(sock.underlying)  # non-blocking reads for the watch's LOOK
        self._monitor = monitor
        self._handshakes = zmq.Socket.shadow(monitor.underlying)  # read without waiting, like _looks
        pending_messages(self._handshakes)  # this connection's handshake: not a reconnect
        return sock

    async def _watch_io(self, step: Any) -> Any:
        """The watch's own steps (see :mod:`sdk.core.publishing`) on the asyncio publisher."""
        sock = self._publisher
        assert sock is not None
        if step is LOOK:
            return pending_messages(self._looks) if sock.getsockopt(_EVENTS) & _POLLIN else []
        if step is RECONNECTED:
            return bool(pending_messages(self._handshakes))
        if isinstance(step, Resend):
            kept = step.kept
            for i in range(0, len(kept), 2):
                await self._send_whole(sock, kept[i : i + 2])
            return None
        assert isinstance(step, WaitForBroker)
        start, timeout = time.perf_counter(), step.timeout
        if step.confirming:
            for _ in spin_looks(self.spin, timeout):  # as the sync bus, the loop's other tasks run between looks
                if sock.getsockopt(_EVENTS) & _POLLIN:
                    return True
                await asyncio.sleep(0)
            timeout -= time.perf_counter() - start
            if timeout <= 0:
                return False
        return bool(await sock.poll(int(timeout * 1000) + 1, _POLLIN))

    async def publish(
        self, event_type: str, payload: Any = None, *, session_id: str | None = None, wait: bool = False
    ) -> int | None:
        """Publish one event. The broker stamps its version.

        The bus numbers the event and keeps it until the broker confirms it, sending it again
        if the broker restarts before that (see :meth:`sdk.Bus.publish`). Waits while the broker
        is behind (high-water mark reached) or gone, or while ``publish_buffer`` bytes are
        unconfirmed, at most ``publish_timeout``.

        Args:
            wait: wait until the broker confirms this event and return its version.

        Returns:
            None, or with ``wait=True`` the version the broker stamped on the event.

        Raises:
            InvalidEvent: bad type, a payload msgpack cannot encode, or (with ``validate=True``)
                a payload that does not match the catalogue.
            MessageTooLarge: the encoded event is over the broker's limit; nothing was sent.
            PublishTimeout: the broker stayed behind (or away) for ``publish_timeout``; nothing was
                sent. With ``wait=True``: sent, but not confirmed within ``publish_timeout``.
            BusUnavailable: the broker could not be reached.
            BusClosed: the bus was closed.
        """
        topic = self._checked_topic(event_type, payload, session_id)
        if self._closed:
            raise BusClosed("bus is closed")
        body = self._body(payload, session_id)
        sock = self._pub
        now = time.monotonic()
        if sock is None or now >= self._watch_at:
            sock = await self._ready_publisher(now)
            self._check_size(body)  # a new broker's limit, learnt just now
        size = len(body) + IDENTITY_SIZE
        if self._kept_bytes + size > self.publish_buffer and self._kept:
            await self._drive_publisher(self._room(size))
            sock = await self._ready_publisher(now)
        number = await self._send_event(sock, topic, body, wait)
        if wait:
            return await self._drive_publisher(self._version(number))  # type: ignore[no-any-return]
        return None

    async def publish_many(self, events: Iterable[Any]) -> int:
        """Publish events, ``(type, payload)`` or ``(type, payload, session_id)`` each, in order,
        as batches (see :meth:`sdk.Bus.publish_many`). Returns how many events were published.

        Raises:
            InvalidEvent, MessageTooLarge: as for :meth:`publish`, for any of the events; every
                event is checked before any is sent, so then nothing was sent.
            PublishTimeout: the broker stayed behind for ``publish_timeout``; the batches before
                the one that timed out were sent.
            BusUnavailable: the broker could not be reached.
            BusClosed: the bus was closed.
        """
        messages = self._batches(events)
        if self._closed:
            raise BusClosed("bus is closed")
        count = 0
        for batch in messages:
            sock = self._pub
            now = time.monotonic()
            if sock is None or now >= self._watch_at:
                sock = await self._ready_publisher(now)
                if batch.size > self.max_event_size:  # a new broker's limit, learnt just now
                    raise MessageTooLarge(batch.size, self.max_event_size)
            if self._kept_bytes + batch.size > self.publish_buffer and self._kept:
                await self._drive_publisher(self._room(batch.size))
                sock = await self._ready_publisher(now)
            count += await self._send_batch(sock, batch)
        return count

    def batch(self, flush_every: int = 4096) -> AsyncBatch:
        """Gather events and publish them as batches: ``async with bus.batch() as batch:``
        ``batch.publish(type, payload)`` (not awaited); sent when the block ends (and at each
        ``await batch.flush()``). An exception in the block discards what is not sent yet."""
        return AsyncBatch(self, flush_every)

    async def _send_event(self, sock: zmq.asyncio.Socket, topic: bytes, body: bytes, wait: bool) -> int:
        """Number and send one event (see :meth:`_send_numbered`); returns its number."""
        frames = await self._send_numbered(sock, lambda: [topic, self._identified(body, wait)])
        self._sent(topic, frames[1])
        number = self._number
        if wait:
            self._wanted[number] = 0
        return number

    async def _send_batch(self, sock: zmq.asyncio.Socket, batch: Outgoing) -> int:
        """Number and send one batch (see :meth:`_send_numbered`); returns how many events it had."""
        head = [BATCH_PREFIX + batch.topic, batch.lengths, batch.joined]
        await self._send_numbered(sock, lambda: [*head, self._batch_identity()])
        self._sent_batch(batch)
        return len(batch.bodies)

    async def _send_numbered(self, sock: zmq.asyncio.Socket, frames: Callable[[], list[bytes]]) -> list[bytes]:
        """Send the message ``frames()`` makes with the bus's next numbers, waiting for room in a
        full queue at most ``publish_timeout``; returns what was sent.

        Sent whole, so tasks never interleave frames; numbered at the try that succeeds, with no
        await in between, so numbers go out in order and never twice. zmq.asyncio's own wait for
        room cannot be used: an XPUB always reports room (POLLOUT), so that wait ends at once
        with EAGAIN. Only a publish that found the queue full pauses.

        Raises:
            PublishTimeout: still no room after ``publish_timeout``; nothing was sent.
        """
        deadline = 0.0
        pause = 0.0005
        while True:
            message = frames()
            try:
                await sock.send_multipart(message, _DONTWAIT)
            except zmq.Again:  # the queue is full: the broker is behind
                now = time.monotonic()
                deadline = deadline or now + self.publish_timeout
                if now >= deadline:
                    raise publish_timed_out(self.publish_timeout) from None
                await asyncio.sleep(min(pause, deadline - now))  # sync-ok: polling for room, bounded
                pause = min(pause * 2, _ROOM_PAUSE_MAX)
                # A watch may have run meanwhile (re-sending): wait for it to end before sending.
                sock = self._pub or await self._ready_publisher(time.monotonic())
                continue
            except zmq.ZMQError as e:
                raise translate(e, "publish") from e
            return message

    async def flush(self, timeout: float | None = None) -> None:
        """See :meth:`sdk.Bus.flush`.

        Raises:
            PublishTimeout: some were not confirmed within ``timeout`` (default ``publish_timeout``).
            BusClosed: the bus was closed.
        """
        if self._closed:
            raise BusClosed("bus is closed")
        if self._publisher is not None:
            await self._drive_publisher(self._flush(timeout))

    async def _send_whole(self, sock: zmq.asyncio.Socket, frames: Any) -> None:
        """Send a message, waiting for room in a full queue at most ``publish_timeout``, pausing in between.

        zmq.asyncio's own wait for room cannot be used: an XPUB always reports room (POLLOUT),
        so that wait ends at once with EAGAIN.

        Raises:
            PublishTimeout: still no room after ``publish_timeout``; nothing was sent.
        """
        deadline = time.monotonic() + self.publish_timeout
        pause = 0.0005
        while True:
            try:
                await sock.send_multipart(frames, _DONTWAIT)
                return
            except zmq.Again:
                pass
            except zmq.ZMQError as e:
                raise translate(e, "publish") from e
            left = deadline - time.monotonic()
            if left <= 0:
                raise publish_timed_out(self.publish_timeout)
            await asyncio.sleep(min(pause, left))  # sync-ok: polling for room, bounded by the deadline
            pause = min(pause * 2, _ROOM_PAUSE_MAX)

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(
        self,
        *patterns: str,
        policy: Policy = "drop",
        hwm: int | None = None,
        timeout: float | None = None,
        since: int | None = None,
        session_id: str | None = None,
        where: Where = None,
    ) -> Pending[Subscription]:
        """Subscribe to events whose type matches any pattern (none, or ``**``: every event).

        ``sub = await bus.subscribe(...)`` or ``async with bus.subscribe(...) as sub:``; either way
        the subscription is live at the broker once it is handed out: any event published after
        that is delivered (unless the subscription falls behind).

        Args:
            patterns: exact types, ``*`` for one segment, a final ``**`` for one or more.
            policy: ``"drop"`` ends the subscription with SlowSubscriberError on the first loss;
                ``"count"`` keeps going and counts losses in ``Subscription.lost``;
                ``"recover"`` fetches lost events from the event log (see :meth:`sdk.Bus.subscribe`).
            hwm: the size of this subscription's own receive queue, in broker messages (one
                event, or under load a run of up to 32). The broker queues up to its
                ``--sub-hwm`` messages more for it: events are lost once both are full.
            timeout: seconds to wait for the broker's confirmation (default: the bus's timeout).
            since: first every logged event above this version, then live ones, seamlessly.
            session_id, where: filters, as for :meth:`sdk.Bus.subscribe`.

        Raises:
            InvalidEvent: an invalid pattern, policy, hwm, since, session_id or where expression
                (at once, before anything is awaited).
            BusUnavailable: the broker did not confirm the subscription in time.
            BusClosed: the bus was closed.
        """
        checked = check_subscription(patterns, policy, hwm=hwm, since=since)
        keep = event_filter(where, session_id)
        if policy not in ASYNC_POLICIES:
            raise InvalidEvent(
                f"policy={policy!r} is not available in sdk.aio yet (it needs the event log);"
                f" use one of {ASYNC_POLICIES}"
            )

        async def open_subscription() -> Subscription:
            if self._closed:
                raise BusClosed("bus is closed")
            stream = stream_wanted(session_id, policy) and bool(
                (await self.control.call({"op": "ping"})).get("session_streams")
            )
            sub = Subscription(
                self, checked, policy=policy, hwm=self.hwm if hwm is None else hwm, since=since, keep=keep,
                session_id=session_id if stream else None,
            )
            self._subscriptions.add(sub)
            wait = self.timeout if timeout is None else timeout
            try:
                await sub._start(wait, wait)
            except BaseException:
                self._subscriptions.discard(sub)
                raise
            return sub

        return Pending(open_subscription)

    def _forget(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    # -- the rest ----------------------------------------------------------------------------

    @property
    def sessions(self) -> AsyncSessionClient:
        """The asyncio session client: ``await bus.sessions.create(title)``, ``get``, ``list``, ``ensure``...

        Raises:
            BusClosed: the bus was closed.
        """
        if self._sessions is None:
            if self._closed:
                raise BusClosed("bus is closed")
            self._sessions = AsyncSessionClient(
                self._ctx, self.endpoints.sessions, timeout=self.timeout, log=lambda: self.log
            )
        return self._sessions

    @property
    def log(self) -> AsyncRequester:
        """The event log client: ``await bus.log.call({"op": ...}, timeout=, retries=)`` returns the result.

        Raises:
            BusUnavailable: the stack has no event log endpoint.
            BusClosed: the bus was closed.
        """
        if self._log is None:
            if self._closed:
                raise BusClosed("bus is closed")
            from sdk.replay import log_client

            self._log = log_client(AsyncRequester, self._ctx, self.endpoints.log, timeout=self.timeout)
        return self._log

    def _server(self, name: str) -> AsyncRequester:
        """The client of a server a flow asks (``"control"``, ``"log"``)."""
        return self.control if name == "control" else self.log

    async def stats(self) -> dict[str, Any]:
        """The broker's counters (events in/out, per topic, rejects, peers).

        Raises:
            BusUnavailable: the broker did not answer.
        """
        return await self.control.call({"op": "stats"})

    async def close(self) -> None:
        """Close every subscription, then the bus; idempotent.

        Waits first, at most ``timeout``, for the broker to confirm what this bus published (a
        warning says how many it did not).
        """
        if self._closed:
            return
        if self._publisher is not None:
            try:
                await self._drive_publisher(self._closing(self.timeout))
            except BusError:  # the wait is best effort: closing goes on
                pass
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        if self._sessions is not None:
            self._sessions.close()
        if self._log is not None:
            self._log.close()
        self.control.close()
        self._pub = None
        if self._publisher is not None:
            self._publisher.disable_monitor()
            self._monitor.close(linger=0)  # type: ignore[union-attr]
            self._publisher.close()  # lingers so queued events still reach the broker
            self._publisher = self._monitor = self._handshakes = None
        # term() waits out the publisher's linger: keep the event loop free meanwhile.
        await asyncio.to_thread(self._ctx.term)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect(
    home: str | os.PathLike[str] | Endpoints | None = None, *, name: str = "component", **options: Any
) -> Pending[Bus]:
    """Connect to the stack in ``home`` (default ``$PRYXBUS_HOME``) or at ``tcp://HOST:PORT``.

    ``bus = await sdk.aio.connect(...)`` (then ``await bus.close()``) or
    ``async with sdk.aio.connect(...) as bus:``. Options are those of :func:`sdk.connect`,
    keyword-only, in seconds: ``name``, ``timeout``, ``publish_timeout``, ``hwm``, ``validate``.

    Raises:
        BusUnavailable: the broker did not answer within ``timeout``.
        InvalidEvent: ``home`` is not a directory or ``tcp://HOST:PORT``.
    """

    async def open_bus() -> Bus:
        return await Bus(home, name=name, **options)._start()

    return Pending(open_bus)


class AsyncBatch:
    """Events gathered for :meth:`Bus.publish_many` (see :meth:`Bus.batch`). One task's."""

    def __init__(self, bus: Bus, flush_every: int) -> None:
        self._bus = bus
        self.flush_every = flush_every
        self.events: list[tuple[str, Any, str | None]] = []

    def publish(self, event_type: str, payload: Any = None, *, session_id: str | None = None) -> None:
        """Add an event (published at the next flush or when the block ends)."""
        self.events.append((event_type, payload, session_id))

    async def flush(self) -> None:
        """Publish what was gathered now (errors as for ``publish_many``)."""
        events, self.events = self.events, []
        for start in range(0, len(events), self.flush_every):
            await self._bus.publish_many(events[start : start + self.flush_every])

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            await self.flush()
        else:
            self.events = []
