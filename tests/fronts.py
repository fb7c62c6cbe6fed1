"""The SDK's two fronts behind one blocking face, so each subscription test is written once.

``connect(front, home, **options)`` gives ``sdk.connect(...)`` for ``"sync"``, and for ``"asyncio"``
an :class:`AioBus`: the asyncio Bus run on an event loop in a background thread, each of its
coroutines awaited there and its result handed back (exceptions included, unchanged).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import sdk
import sdk.aio

FRONTS = ("sync", "asyncio")
T = TypeVar("T")
_LONGEST = 300.0  # no call a test makes waits this long: a hung loop fails the test instead


class Loop:
    """An event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_LONGEST)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_LONGEST)
        self.loop.close()


class AioSubscription:
    """A blocking face of ``sdk.aio.Subscription``."""

    def __init__(self, loop: Loop, sub: Any) -> None:
        self._loop, self._sub = loop, sub

    def recv(self, timeout: float | None = None) -> sdk.Event:
        return self._loop.run(self._sub.recv(timeout=timeout))

    def __iter__(self) -> Iterator[sdk.Event]:
        while True:
            try:
                yield self.recv()
            except sdk.BusClosed:
                return

    def close(self) -> None:
        self._loop.run(self._sub.close())

    def __getattr__(self, name: str) -> Any:  # lost, recovered, restarts, malformed, closed, patterns
        return getattr(self._sub, name)

    def __enter__(self) -> AioSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AioBus:
    """A blocking face of ``sdk.aio.Bus``: the same methods as ``sdk.Bus`` for what the tests use."""

    def __init__(self, home: Any, **options: Any) -> None:
        self._loop = Loop()
        try:
            self._bus = self._loop.run(self._connect(home, options))
        except BaseException:
            self._loop.close()
            raise

    @staticmethod
    async def _connect(home: Any, options: dict[str, Any]) -> Any:
        return await sdk.aio.connect(home, **options)

    def publish(self, event_type: str, payload: Any = None, **options: Any) -> None:
        self._loop.run(self._bus.publish(event_type, payload, **options))

    def subscribe(self, *patterns: str, **options: Any) -> AioSubscription:
        async def opened() -> Any:
            return await self._bus.subscribe(*patterns, **options)

        return AioSubscription(self._loop, self._loop.run(opened()))

    def replay(self, *patterns: str, **options: Any) -> Iterator[sdk.Event]:
        async def collect() -> list[sdk.Event]:
            return [event async for event in self._bus.replay(*patterns, **options)]

        return iter(self._loop.run(collect()))

    def log_tail(self, *patterns: str, **options: Any) -> list[sdk.Event]:
        return self._loop.run(self._bus.log_tail(*patterns, **options))

    def log_stats(self) -> dict[str, Any]:
        return self._loop.run(self._bus.log_stats())

    def stats(self) -> dict[str, Any]:
        return self._loop.run(self._bus.stats())

    @property
    def endpoints(self) -> Any:
        return self._bus.endpoints

    @property
    def name(self) -> str:
        return self._bus.name

    def close(self) -> None:
        try:
            self._loop.run(self._bus.close())
        finally:
            self._loop.close()

    def __enter__(self) -> AioBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(front: str, home: Any, **options: Any) -> Any:
    """``sdk.connect`` through ``front`` ("sync" or "asyncio")."""
    if front == "sync":
        return sdk.connect(home, **options)
    return AioBus(home, **options)
