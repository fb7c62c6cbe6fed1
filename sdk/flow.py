"""Flows: operations of several requests written once, socket-free, and their sync and asyncio drivers.

A flow is a generator that yields the I/O it needs and gets the outcome back, as httpx drives one
auth flow from its sync and its async client: :class:`Ask` (a request to one of the servers: its
``result`` comes back, or its error is raised inside the flow) and :class:`Work` (a blocking local
function, such as writing a file: its return value comes back). :func:`run` drives a flow with
blocking requesters, :func:`arun` with asyncio ones, running ``Work`` in a worker thread so the
event loop never blocks on a disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Ask(NamedTuple):
    """A step: send ``request`` to ``server`` (``"sessions"``, ``"log"``, ``"control"``) with the
    Lazy Pirate client, and give back the reply's ``result``."""

    server: str
    request: dict[str, Any]
    timeout: float | None = None
    retries: int | None = None


class Work(NamedTuple):
    """A step: call ``function()`` (blocking, local: a file) and give back what it returns."""

    function: Callable[[], Any]


Flow = Generator[Any, Any, T]
"""A generator yielding steps (Ask, Work, or a flow's own) and returning a T."""


def run(flow: Flow[T], servers: Callable[[str], Any], io: Callable[[Any], Any] | None = None) -> T:
    """Drive ``flow`` to its end with blocking I/O; ``servers(name)`` gives that server's Requester,
    ``io(step)`` does any other step (a flow's own, such as the publisher's watch steps).

    Raises:
        Whatever the flow raises (a server's error it does not handle is raised through it).
    """
    try:
        step = next(flow)
        while True:
            try:
                if isinstance(step, Ask):
                    outcome = servers(step.server).call(step.request, timeout=step.timeout, retries=step.retries)
                elif isinstance(step, Work):
                    outcome = step.function()
                else:
                    outcome = io(step)  # type: ignore[misc]
            except BaseException as e:  # the flow decides; if it does not catch it, it comes back out
                step = flow.throw(e)
            else:
                step = flow.send(outcome)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(flow: Flow[T], servers: Callable[[str], Any], io: Callable[[Any], Any] | None = None) -> T:
    """Drive ``flow`` to its end in asyncio; ``servers(name)`` gives that server's AsyncRequester,
    ``await io(step)`` does any other step.

    Raises:
        Whatever the flow raises (a server's error it does not handle is raised through it).
    """
    try:
        step = next(flow)
        while True:
            try:
                if isinstance(step, Ask):
                    outcome = await servers(step.server).call(step.request, timeout=step.timeout, retries=step.retries)
                elif isinstance(step, Work):
                    outcome = await asyncio.to_thread(step.function)
                else:
                    outcome = await io(step)  # type: ignore[misc]
            except BaseException as e:
                step = flow.throw(e)
            else:
                step = flow.send(outcome)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
