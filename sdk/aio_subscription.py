"""A live subscription, asyncio front: one ``zmq.asyncio`` SUB socket driving the core in :mod:`sdk.core`.

It does what :class:`sdk.subscription.Subscription` does, with the same core: only receiving and
performing the flows' steps (awaited, the log requests included) differ.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import zmq
import zmq.asyncio

from sdk.core.decoding import EventDecoder, Policy, Resolve, unwrap
from sdk.core.subscribing import decoder_for
from sdk.core.flows import PAGE, Filter, Receive, drive_async, sync_token
from sdk.core.subscribing import Counters, handshake, seam
from sdk.errors import BusClosed, BusTimeout, SlowSubscriberError
from sdk.event import Event
from sdk.filters import Predicate, pending_queue
from sdk.subscription import deadline_of
from sdk.transport import event_socket

if TYPE_CHECKING:
    from sdk.aio import Bus

_NOBLOCK = int(zmq.NOBLOCK)
_IDLE_SLICE = 0.1  # how often a waiting receive sees whether idle work (a restart look, a catch-up) is due


class Subscription(Counters):
    """Events matching some patterns, in version order. Create with ``await bus.subscribe(...)``.

    ``async for ev in sub`` or ``await sub.recv(timeout=)``. Closing it (or its Bus) ends iteration.
    """

    def __init__(
        self,
        bus: Bus,
        patterns: tuple[str, ...],
        *,
        policy: Policy,
        hwm: int,
        since: int | None = None,
        keep: Predicate | None = None,
        session_id: str | None = None,
    ) -> None:
        self.patterns = patterns
        self._bus = bus
        self._closed = False
        self._failed: SlowSubscriberError | None = None
        self._pending: deque[Event] = pending_queue(keep)
        self._nowait: zmq.Socket | None = None
        self._reading = asyncio.Lock()
        """One task reads the socket and drives the decoder at a time (as the sync front's lock):
        two would run one gap's flow twice, and one's non-blocking drain could take the wake-up
        of the other's waiting receive."""
        self._decoder: EventDecoder = decoder_for(
            patterns, policy, since=since, timeout=bus.timeout, page=min(PAGE, max(hwm, 1000)),
            session_id=session_id,
        )
        self._since = since
        self._idle = False
        """Whether a waiting receive runs the decoder's idle flows (not during the handshake)."""
        sock = event_socket(bus._ctx.socket(zmq.SUB))
        sock.linger = 0
        sock.rcvhwm = hwm
        self._sock: zmq.asyncio.Socket = sock

    async def _start(self, timeout: float, seam_timeout: float) -> None:
        """Connect, subscribe, return once the broker has our filters, then (``since=``) the seam."""
        sock = self._sock
        try:
            sock.connect(self._bus.endpoints.subscribe)
            sock.sndhwm = 0  # no limit: a SUB sends only subscriptions, and one dropped is never sent again
            for prefix in self._decoder.prefixes:
                sock.subscribe(prefix)
            token = sync_token()
            sock.subscribe(token)
            endpoint = self._bus.endpoints.subscribe
            await self._run(handshake(self._decoder, self._pending, token, endpoint=endpoint, timeout=timeout))
            sock.unsubscribe(token)
            if self._since is not None:
                await self._run(seam(self._decoder, self._pending, self.patterns, self._since, timeout=seam_timeout))
            self._idle = True
        except BaseException:
            self._closed = True
            sock.close(linger=0)
            raise

    async def _run(self, flow: Resolve) -> None:
        await drive_async(flow, self._server, self._io)

    def _server(self, name: str) -> Any:
        """The requester of a server a core flow asks (the bus's)."""
        return self._bus.control if name == "control" else self._bus.log

    async def _io(self, step: Receive | Filter) -> list[bytes] | None:
        """A core flow's Receive (the next message's frames, or None at its deadline) or Filter."""
        if type(step) is Filter:
            if not self._sock.closed:
                self._sock.setsockopt(zmq.SUBSCRIBE if step.on else zmq.UNSUBSCRIBE, step.prefix)
            return None
        return await self._next_frames(step.deadline, idle=False)

    async def _next_frames(self, deadline: float | None, *, idle: bool = True) -> list[bytes] | None:
        """The next delivered message; None at the deadline; [] when an idle flow queued events.

        Raises:
            BusClosed: the subscription was closed (also while waiting).
        """
        sock = self._sock
        if sock.closed:
            raise BusClosed("subscription is closed")
        future = sock.recv_multipart(_NOBLOCK)  # resolves at once: a message, or zmq.Again
        if future.exception() is None:
            return unwrap(self._decoder.head, future.result())
        if not isinstance(future.exception(), zmq.Again):
            raise BusClosed("subscription is closed") from future.exception()
        idle = idle and self._idle
        future = sock.recv_multipart()
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    future.cancel()
                    return None
                wait = remaining
                if idle:  # wait in slices, to run the decoder's idle flows
                    wait = _IDLE_SLICE if remaining is None else min(remaining, _IDLE_SLICE)
                done, _ = await asyncio.wait({future}, timeout=wait)
                if done:
                    break
                if idle:
                    now = time.monotonic()
                    decoder = self._decoder
                    flow = decoder.idle(now, math.inf if deadline is None else deadline - now, self._pending.append)
                    if flow is not None:
                        future.cancel()  # not done (no await since): the flow may receive itself
                        try:
                            await self._run(flow)
                        except SlowSubscriberError as e:
                            self._failed = e
                            self._close_socket()
                            return []
                        if self._pending or decoder.busy:
                            return []
                        if sock.closed:
                            raise BusClosed("subscription is closed")
                        future = sock.recv_multipart()
        except asyncio.CancelledError:
            future.cancel()  # never leave a receive behind that would swallow a message
            raise
        if future.cancelled():  # close() cancels every pending receive of the socket
            raise BusClosed("subscription is closed")
        error = future.exception()
        if error is not None:
            raise BusClosed("subscription is closed") from error
        return unwrap(self._decoder.head, future.result())

    # -- receiving ---------------------------------------------------------------------------

    async def recv(self, timeout: float | None = None) -> Event:
        """The next matching event.

        Args:
            timeout: seconds to wait; None waits until an event arrives or the subscription closes.

        Raises:
            BusTimeout: nothing arrived in time (also a ``TimeoutError``).
            SlowSubscriberError: events were lost and the policy is ``"drop"``; the subscription is over.
            BusClosed: the subscription or its bus was closed.
        """
        pending = self._pending
        if pending:
            return pending.popleft()
        if self._closed and self._failed is None:
            raise BusClosed("subscription is closed")
        deadline = deadline_of(timeout)
        await self._take_turn(deadline, timeout)
        try:
            return await self._receive(deadline, timeout)
        finally:
            self._reading.release()

    async def _take_turn(self, deadline: float | None, timeout: float | None) -> None:
        """Wait, up to the deadline, while another task reads this subscription.

        Raises:
            BusTimeout: the other task still reads at the deadline.
        """
        if deadline is None:
            await self._reading.acquire()
            return
        # Not only while locked(): a turn just released is promised to a woken waiter (not yet
        # run), and an acquire then queues behind it however free the lock looks.
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                await self._reading.acquire()
        except TimeoutError:
            raise BusTimeout(f"no event within {timeout:g}s") from None

    async def _receive(self, deadline: float | None, timeout: float | None) -> Event:
        """``recv`` in this task's turn."""
        pending = self._pending
        decoder, append = self._decoder, pending.append
        while True:
            if pending:  # a recovered gap is queued ahead of the event that revealed it
                return pending.popleft()
            if self._failed is not None:
                raise self._failed
            if decoder.busy:  # a recover fill, a page per turn: the deadline holds between pages
                try:
                    await self._run(decoder.resolve(append))
                except SlowSubscriberError as e:
                    self._failed = e
                    self._close_socket()
                if not pending and deadline is not None and time.monotonic() >= deadline:
                    raise BusTimeout(f"no event within {timeout:g}s")
                continue
            frames = await self._next_frames(deadline)
            if frames is None:
                raise BusTimeout(f"no event within {timeout:g}s")
            if not frames:
                continue
            if len(frames) != 3:
                decoder.malformed += 1
                continue
            try:
                decoder.feed(*frames, append)
                if decoder.held is not None:  # a gap: settled by a flow before reading on
                    await self._run(decoder.resolve(append))
                    if not pending and deadline is not None and time.monotonic() >= deadline:
                        raise BusTimeout(f"no event within {timeout:g}s")
            except SlowSubscriberError as e:
                self._failed = e
                self._close_socket()

    async def recv_many(self, max: int = 1024, timeout: float | None = None) -> list[Event]:
        """Every matching event that has arrived, up to ``max``, in one call (a list, oldest first).

        Waits up to ``timeout`` seconds (None: until an event arrives or the subscription closes)
        for the first; an empty list if none came in time. Losses and errors as for :meth:`recv`.
        """
        if max < 1:
            raise ValueError(f"max must be at least 1, not {max!r}")
        pending = self._pending
        if not pending:
            try:
                pending.appendleft(await self.recv(timeout))
            except BusTimeout:
                return []
        if self._reading.locked():  # another task reads: hand over what is here
            return self._take(max)
        async with self._reading:
            await self._drain(max)
        return self._take(max)

    async def _drain(self, max: int) -> None:
        """Decode what has already arrived, without waiting, until ``max`` events are pending."""
        pending = self._pending
        decoder, append, sock = self._decoder, pending.append, self._sock
        while len(pending) < max and not (self._failed or decoder.busy or sock.closed):
            if self._nowait is None:  # a sync shadow of the socket: what has arrived, no waiting
                self._nowait = zmq.Socket.shadow(sock.underlying)
            try:
                frames = unwrap(decoder.head, self._nowait.recv_multipart(_NOBLOCK))
            except zmq.Again:
                break
            except zmq.ZMQError:
                break
            if len(frames) != 3:
                decoder.malformed += 1
                continue
            try:
                decoder.feed(*frames, append)
                if decoder.held is not None:
                    await self._run(decoder.resolve(append))
            except SlowSubscriberError as e:
                self._failed = e
                self._close_socket()

    def _take(self, max: int) -> list[Event]:
        """Up to ``max`` pending events, oldest first."""
        pending = self._pending
        if len(pending) <= max:
            out = list(pending)
            pending.clear()
            return out
        popleft = pending.popleft
        return [popleft() for _ in range(max)]

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        """Events until the subscription is closed; a loss under ``policy="drop"`` raises."""
        while True:
            try:
                yield await self.recv()
            except BusClosed:
                return

    # -- lifecycle ---------------------------------------------------------------------------

    def _close_socket(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)  # cancels a receive another task is waiting on

    async def close(self) -> None:
        """End the subscription; idempotent, and safe while another task is in ``recv``."""
        self._closed = True
        self._close_socket()
        self._bus._forget(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


T = TypeVar("T")


class Pending(Generic[T]):
    """An awaitable that is also an async context manager: ``x = await f()`` or ``async with f() as x``.

    On ``async with`` exit the object's ``close()`` is awaited.
    """

    def __init__(self, factory: Callable[[], Awaitable[T]]) -> None:
        self._factory = factory
        self._value: Any = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._factory().__await__()

    async def __aenter__(self) -> T:
        self._value = await self._factory()
        return self._value

    async def __aexit__(self, *exc: object) -> None:
        await self._value.close()
