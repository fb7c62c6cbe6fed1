"""A live subscription for asyncio: one ``zmq.asyncio`` SUB socket, decoded by the shared EventDecoder."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import zmq
import zmq.asyncio

from sdk.wire import subscription_unconfirmed
from sdk.errors import BusClosed, BusError, BusTimeout, SlowSubscriberError
from sdk.event import Event
from sdk.subscription import (
    EPOCH_QUESTION,
    IDLE_LOOK_TIMEOUT,
    EventDecoder,
    Policy,
    broker_epoch,
    deadline_of,
    sync_token,
)
from sdk.transport import event_socket

if TYPE_CHECKING:
    from sdk.aio import Bus

_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_IDLE_SLICE = 0.1  # how often a waiting receive sees whether a look for a restart is due


class Subscription:
    """Events matching some patterns, in version order. Create with ``await bus.subscribe(...)``.

    ``async for ev in sub`` or ``await sub.recv(timeout=)``. Closing it (or its Bus) ends iteration.
    """

    def __init__(self, bus: Bus, patterns: tuple[str, ...], *, policy: Policy, hwm: int) -> None:
        self.patterns = patterns
        self._bus = bus
        self._closed = False
        self._failed: SlowSubscriberError | None = None
        self._pending: deque[Event] = deque()
        self._recovering = policy == "recover"
        if self._recovering:  # gaps are filled from the event log (sdk/aio_replay.py)
            from sdk.aio_replay import recovering_decoder

            self._decoder: EventDecoder = recovering_decoder(patterns, bus._log_side(), self._pending)
        else:
            self._decoder = EventDecoder(patterns, policy)
        self._looks = False
        """Whether a receive that waits asks the broker, about once a second, which run it is."""
        sock = event_socket(bus._ctx.socket(zmq.SUB))
        sock.linger = 0
        sock.rcvhwm = hwm
        self._sock: zmq.asyncio.Socket = sock

    async def _start(self, timeout: float) -> None:
        """Connect, subscribe, and return once the broker has our filters (its sync reply arrived)."""
        sock = self._sock
        try:
            sock.connect(self._bus.endpoints.subscribe)
            for prefix in self._decoder.prefixes:
                sock.subscribe(prefix)
            token = sync_token()
            sock.subscribe(token)
            deadline = time.monotonic() + timeout
            while True:
                frames = await self._next_frames(deadline)
                if frames is None:
                    raise subscription_unconfirmed(self._bus.endpoints.subscribe, timeout)
                if len(frames) != 3:
                    continue
                topic, stamp, body = frames
                if topic == token:
                    break
                if topic[:1] != b"\x00":  # an event that arrived before the sync reply: keep it
                    self._decoder.feed(topic, stamp, body, self._pending.append)
            sock.unsubscribe(token)
            if not self._recovering:  # which broker we are listening to (see look_for_restart)
                try:
                    self._decoder.epoch = broker_epoch(await self._bus.control.call(EPOCH_QUESTION))
                except BusError:
                    pass
                self._looks = True
        except BaseException:
            self._closed = True
            sock.close(linger=0)
            raise

    async def _next_frames(self, deadline: float | None) -> list[bytes] | None:
        """The next delivered message, or None at the deadline.

        Raises:
            BusClosed: the subscription was closed (also while waiting).
        """
        sock = self._sock
        if sock.closed:
            raise BusClosed("subscription is closed")
        future = sock.recv_multipart(_NOBLOCK)  # resolves at once: a message, or zmq.Again
        if future.exception() is None:
            return future.result()
        if not isinstance(future.exception(), zmq.Again):
            raise BusClosed("subscription is closed") from future.exception()
        future = sock.recv_multipart()
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    future.cancel()
                    return None
                wait = remaining
                if self._looks:  # wait in slices, to look for a restarted broker while idle
                    wait = _IDLE_SLICE if remaining is None else min(remaining, _IDLE_SLICE)
                done, _ = await asyncio.wait({future}, timeout=wait)
                if done:
                    break
                if self._looks:
                    await self._look_for_restart(deadline)
        except asyncio.CancelledError:
            future.cancel()  # never leave a receive behind that would swallow a message
            raise
        if future.cancelled():  # close() cancels every pending receive of the socket
            raise BusClosed("subscription is closed")
        error = future.exception()
        if error is not None:
            raise BusClosed("subscription is closed") from error
        return future.result()

    async def _look_for_restart(self, deadline: float | None) -> None:
        """While no event arrives: is this still the same broker? (EventDecoder.look_for_restart)"""
        decoder, now = self._decoder, time.monotonic()
        left = IDLE_LOOK_TIMEOUT if deadline is None else min(IDLE_LOOK_TIMEOUT, deadline - now)
        if left <= 0 or not decoder.look_due(now):
            return
        try:
            reply = await self._bus.control.call(EPOCH_QUESTION, timeout=left, retries=0)
        except BusError:  # no answer: looked at again later
            return
        decoder.looked(broker_epoch(reply))

    # -- receiving ---------------------------------------------------------------------------

    @property
    def lost(self) -> int:
        """Events lost so far (with ``policy="count"``; with ``"drop"`` the first loss ends it)."""
        return self._decoder.lost

    @property
    def restarts(self) -> int:
        """Broker restarts this subscription rode through (seen as a topic sequence starting over,
        or, as on a sync subscription with the ``drop`` or ``count`` policy, by asking the broker
        about once a second while no event arrives)."""
        return self._decoder.restarts

    @property
    def malformed(self) -> int:
        """Delivered messages that could not be decoded and were skipped."""
        return self._decoder.malformed

    @property
    def closed(self) -> bool:
        return self._closed

    async def recv(self, timeout: float | None = None) -> Event:
        """The next matching event.

        Args:
            timeout: seconds to wait; None waits until an event arrives or the subscription closes.

        Raises:
            BusTimeout: nothing arrived in time (also a ``TimeoutError``).
            SlowSubscriberError: events were lost and the policy is ``"drop"``; the subscription is over.
            BusClosed: the subscription or its bus was closed.
        """
        if self._pending:
            return self._pending.popleft()
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise BusClosed("subscription is closed")
        deadline = deadline_of(timeout)
        feed, pending = self._decoder.feed, self._pending
        while True:
            if pending:  # a recovered gap is queued ahead of the event that revealed it
                return pending.popleft()
            if self._recovering:
                event = await self._recover_step(deadline)
                if event is not None:
                    return event
                continue
            frames = await self._next_frames(deadline)
            if frames is None:
                raise BusTimeout(f"no event within {timeout:g}s")
            if len(frames) != 3:
                self._decoder.malformed += 1
                continue
            try:
                feed(*frames, pending.append)
            except SlowSubscriberError as e:
                self._failed = e
                self._close_socket()
                raise

    async def _recover_step(self, deadline: float | None) -> Event | None:
        """One receive of a ``policy="recover"`` subscription: a gap is fetched from the log, and
        an idle slice asks the broker whether the newest events were lost (sdk/aio_replay.py).

        Raises:
            BusTimeout: the deadline passed.
            SlowSubscriberError: the log could not supply a gap.
        """
        from sdk.aio_replay import GapFound, catch_up, fill

        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise BusTimeout("no event in time")
        slice_end = now + 0.1 if deadline is None else min(deadline, now + 0.1)
        frames = await self._next_frames(slice_end)
        if frames is None:
            return await catch_up(self)
        if len(frames) != 3:
            self._decoder.malformed += 1
            return None
        try:
            try:
                self._decoder.feed(*frames, self._pending.append)
            except GapFound as gap:
                await fill(self, gap, frames)
            return None
        except SlowSubscriberError as e:
            self._failed = e
            self._close_socket()
            raise

    @property
    def recovered(self) -> int:
        """Events fetched from the event log to fill gaps (``policy="recover"`` only)."""
        return getattr(self._decoder, "recovered", 0)

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
