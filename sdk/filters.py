"""Subscription filters evaluated in the SDK: ``where=`` (a Python callable, or a JMESPath
expression as a string) and the exact ``session_id=`` check.

A filter runs on decoded events, after the per-topic sequences were checked, so loss detection
stays exact whatever it lets through. docs/sdk.md says where each filter runs and what it costs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import jmespath
from jmespath.exceptions import JMESPathError

from sdk.errors import InvalidEvent
from sdk.event import Event

Predicate = Callable[[Event], Any]
Where = Union[Predicate, str, None]

__all__ = ["FilteredQueue", "Predicate", "Where", "compile_where", "event_filter", "filtered", "fields_of"]


def fields_of(event: Event) -> dict[str, Any]:
    """What a ``where`` expression sees: ``type``, ``version``, ``seq``, ``ts``, ``source``,
    ``session_id``, ``payload`` (the event's own attribute dict, not a copy)."""
    return vars(event)


def _jmespath_true(value: Any) -> bool:
    """JMESPath's truth: false, null, "", [] and {} are false; everything else (0 too) is true."""
    return not (value is None or value is False or value == "" or value == [] or value == {})


def compile_where(where: Where) -> Predicate | None:
    """The predicate of a ``where=`` argument: a callable as given, a string compiled as JMESPath.

    Raises:
        InvalidEvent: not a callable or a str, or a string that is not a JMESPath expression.
    """
    if where is None or callable(where):
        return where
    if not isinstance(where, str):
        raise InvalidEvent(f"where must be a callable or a JMESPath expression (a str), not {type(where).__name__}")
    try:
        search = jmespath.compile(where).search
    except JMESPathError as e:
        raise InvalidEvent(f"where: not a valid JMESPath expression: {where!r}: {e}".replace("\n", " ")) from None

    def matches(event: Event) -> bool:
        return _jmespath_true(search(vars(event)))

    matches.__doc__ = f"where {where!r}"
    return matches


def event_filter(where: Where = None, session_id: str | None = None) -> Predicate | None:
    """One predicate for both filters (None: keep everything).

    Raises:
        InvalidEvent: a bad ``where`` (see :func:`compile_where`) or a ``session_id`` that is not a str.
    """
    predicate = compile_where(where)
    if session_id is None:
        return predicate
    if not isinstance(session_id, str) or not session_id:
        raise InvalidEvent(f"session_id must be a non-empty str, not {session_id!r}")
    if predicate is None:
        return lambda event: event.session_id == session_id
    return lambda event: event.session_id == session_id and predicate(event)


class FilteredQueue(deque):  # type: ignore[type-arg]
    """A subscription's queue of decoded events that keeps only those its filter accepts.

    The decoders append every event they decode (their sequences are already checked); this
    queue drops the rest. A filter that raises counts as a no and is counted in ``errors``.
    """

    def __init__(self, keep: Predicate) -> None:
        super().__init__()
        self.keep = keep
        self.errors = 0
        self.dropped = 0

    def append(self, event: Event) -> None:
        try:
            ok = self.keep(event)
        except Exception:
            self.errors += 1
            ok = False
        if ok:
            deque.append(self, event)
        else:
            self.dropped += 1

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.append(event)


def pending_queue(keep: Predicate | None) -> deque[Event]:
    """A plain deque without a filter (no cost per event), else a :class:`FilteredQueue`."""
    return deque() if keep is None else FilteredQueue(keep)


def filtered(events: Iterator[Event], keep: Predicate | None) -> Iterator[Event]:
    """``events`` that ``keep`` accepts (all of them for None)."""
    if keep is None:
        yield from events
        return
    for event in events:
        if keep(event):
            yield event


async def afiltered(events: Any, keep: Predicate | None) -> Any:
    """:func:`filtered` for an async iterator."""
    async for event in events:
        if keep is None or keep(event):
            yield event
