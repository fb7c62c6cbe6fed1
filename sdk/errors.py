"""Every error the SDK raises. One root, ``BusError``; ZeroMQ errors are translated in one place.

::

    BusError
    ├── BusUnavailable            the broker or session service did not answer
    ├── BusClosed                 the Bus or Subscription was already closed
    ├── UnsafeHome (PermissionError) the home belongs to, or can be written by, another user
    ├── InvalidEvent (ValueError) bad type, pattern or payload (see .reason)
    │   └── MessageTooLarge       encoded event over the broker's limit (.size, .limit)
    ├── BusTimeout (TimeoutError) a receive or publish did not complete in time
    │   └── PublishTimeout        the broker stayed behind for the whole publish timeout
    ├── SlowSubscriberError       a subscription fell behind and lost events (.lost)
    ├── SessionError              the session service refused a request (.code)
    │   ├── SessionNotFound (KeyError)
    │   └── SessionConflict       a different session has that id (a create with another title, an import)
    └── RemoteError               a server answered with an error the SDK does not know (.code)
"""

from __future__ import annotations

import zmq


class BusError(Exception):
    """Root of every pryxbus error."""


class BusUnavailable(BusError):
    """The broker or the session service did not answer in time."""


class BusClosed(BusError):
    """The Bus or Subscription was used after ``close()``."""


class UnsafeHome(BusError, PermissionError):
    """The home belongs to another user, or others can write it: whoever can replace its sockets
    would receive every request, so the SDK refuses it (as ssh refuses such a ``~/.ssh``)."""


class InvalidEvent(BusError, ValueError):
    """An event type, pattern or payload that cannot be published or subscribed to."""


def not_unicode(label: str, text: object) -> InvalidEvent | None:
    """An InvalidEvent saying ``label`` is not valid Unicode if ``text`` is a str holding a lone
    surrogate (what Python makes of a non-UTF-8 command-line argument), else None."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as bad:
            return InvalidEvent(f"{label} is not valid Unicode text (a lone surrogate at position {bad.start})")
    return None


class MessageTooLarge(InvalidEvent):
    """The encoded event is larger than the broker accepts; nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes encoded; the broker accepts at most {limit}")
        self.size = size
        self.limit = limit


class BusTimeout(BusError, TimeoutError):
    """An operation did not complete before its timeout."""


class PublishTimeout(BusTimeout):
    """The broker stayed behind (high-water mark reached) for the whole publish timeout.

    The event was not sent; publishing it again later is safe.
    """


class SlowSubscriberError(BusError):
    """The subscription lost events: it fell behind the broker's high-water mark, or the broker
    restarted and stamped them before the subscription was back.

    Attributes:
        lost: how many events were lost (exact, from the per-topic sequence).
        topic: the event type on which the loss was first seen.
    """

    def __init__(self, lost: int, topic: str) -> None:
        super().__init__(
            f"subscription lost {lost} event(s) of {topic!r}: it fell behind the broker's high-water"
            " mark, or missed them while the broker restarted"
        )
        self.lost = lost
        self.topic = topic


class SessionError(BusError):
    """The session service refused a request."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class SessionNotFound(SessionError, KeyError):
    """No session has that id."""

    def __init__(self, message: str, code: str = "not_found") -> None:
        super().__init__(message, code)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class SessionConflict(SessionError):
    """A different session already has this id: a ``create`` with that id and another title, or an
    imported session that differs from the one here (pass ``overwrite=True`` to replace it)."""

    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(message, code)


class RemoteError(BusError):
    """A server answered with an error code the SDK does not map to a class of its own."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


def translate(e: zmq.ZMQError, what: str) -> BusError:
    """Turn a ZeroMQ error into the matching BusError (raise it ``from e``)."""
    if isinstance(e, zmq.Again):
        return BusTimeout(f"{what}: timed out")
    if e.errno == zmq.ETERM:
        return BusClosed(f"{what}: the bus is closed")
    return BusUnavailable(f"{what}: {e}")
