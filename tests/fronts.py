"""The ``front`` fixture: one SDK test runs on the sync ``sdk`` and on ``sdk.aio`` behind a blocking facade.

A test takes ``front`` and uses ``front.connect(home, ...)`` and ``front.open_sessions(home, ...)``
as it would ``sdk.connect`` and ``SessionClient.open``. On the asyncio front these return a
:class:`Blocking` facade: every attribute of the asyncio object is read on an event loop running
in a background thread, every call runs there too (awaited when it returns an awaitable), async
iterators become iterators, ``with`` is ``async with``, and SDK objects that come back (the
session client, the log requester, a subscription) are wrapped in turn. Values (events, sessions,
dicts, numbers) and exceptions come back as they are. So the facade needs no list of methods: a
method added to ``sdk.aio`` is tested as soon as a test calls it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest

import sdk
import sdk.aio
from sdk.aio_sessions import AsyncSessionClient
from sdk.sessions import SessionClient

T = TypeVar("T")

CALL_TIMEOUT = 120.0
"""Seconds a call through the facade may take before the test fails (each SDK call has its own, shorter, timeout)."""


class LoopThread:
    """An asyncio event loop running in a daemon thread until :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="front-asyncio", daemon=True)
        self._thread.start()

    def run(self, make: Callable[[], Any]) -> Any:
        """Call ``make()`` on the loop, await what it returns if that is awaitable, and return the outcome."""

        async def go() -> Any:
            result = make()
            if inspect.isawaitable(result):
                result = await result
            return result

        future: Future[Any] = asyncio.run_coroutine_threadsafe(go(), self.loop)
        return future.result(CALL_TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _is_value(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return not module.startswith("sdk") or dataclasses.is_dataclass(obj) or isinstance(obj, BaseException)


class Blocking:
    """A blocking view of an asyncio SDK object (see the module docstring)."""

    def __init__(self, target: Any, loop: LoopThread) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def _wrap(self, obj: Any) -> Any:
        if hasattr(obj, "__anext__") and not hasattr(obj, "recv"):
            return self._iterate(obj)
        return obj if _is_value(obj) else Blocking(obj, self._loop)

    def _iterate(self, iterator: Any) -> Iterator[Any]:
        while True:
            try:
                item = self._loop.run(lambda: iterator.__anext__())
            except StopAsyncIteration:
                return
            yield self._wrap(item)

    def __getattr__(self, name: str) -> Any:
        if inspect.isfunction(inspect.getattr_static(type(self._target), name, None)):
            value = getattr(self._target, name)  # a plain method: binding it touches nothing asyncio
        else:  # a property or data: read on the loop, as asyncio code would
            value = self._loop.run(lambda: getattr(self._target, name))
        if not callable(value) or isinstance(value, type):
            return self._wrap(value)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(self._loop.run(lambda: value(*args, **kwargs)))

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __enter__(self) -> Any:
        entered = self._loop.run(lambda: self._target.__aenter__())
        return self if entered is self._target else self._wrap(entered)

    def __exit__(self, *exc: object) -> None:
        self._loop.run(lambda: self._target.__aexit__(*exc))

    def __iter__(self) -> Iterator[Any]:
        return self._iterate(self._loop.run(lambda: self._target.__aiter__()))

    def __repr__(self) -> str:
        return f"Blocking({self._target!r})"


class Front:
    """How a test reaches the SDK: ``name`` is ``"sync"`` or ``"asyncio"``."""

    def __init__(self, name: str, loop: LoopThread | None = None) -> None:
        self.name = name
        self._loop = loop

    def connect(self, home: Any = None, **options: Any) -> Any:
        """``sdk.connect(home, **options)``, or the same asyncio Bus behind a blocking facade."""
        if self._loop is None:
            return sdk.connect(home, **options)
        loop = self._loop
        return Blocking(loop.run(lambda: sdk.aio.connect(home, **options)), loop)

    def open_sessions(self, home: Any = None, **options: Any) -> Any:
        """``SessionClient.open(home, **options)``, or ``AsyncSessionClient.open`` behind the facade."""
        if self._loop is None:
            return SessionClient.open(home, **options)
        loop = self._loop
        return Blocking(loop.run(lambda: AsyncSessionClient.open(home, **options)), loop)

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine made by ``make()`` on the asyncio front's loop (for what a test must await itself)."""
        assert self._loop is not None, "only the asyncio front has a loop"
        return self._loop.run(make)  # type: ignore[no-any-return]


@pytest.fixture(params=["sync", "asyncio"])
def front(request: pytest.FixtureRequest) -> Iterator[Front]:
    """The SDK front a test runs on: the sync ``sdk``, then ``sdk.aio`` behind a blocking facade."""
    if request.param == "sync":
        yield Front("sync")
        return
    loop = LoopThread()
    try:
        yield Front("asyncio", loop)
    finally:
        loop.close()


sync_only = pytest.mark.parametrize("front", ["sync"], indirect=True)
"""Mark a test that takes ``front`` (directly or through a fixture) to run on the sync front only:
for tests of a server's behaviour, where the SDK front is only the way in."""
