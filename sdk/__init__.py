"""pryxbus SDK: publish and subscribe to versioned events, keep sessions. Hides every socket.

>>> import sdk
>>> with sdk.connect() as bus:
...     bus.publish("channel:message", {"text": "hi"})
"""

from sdk.bus import Bus, connect
from sdk.errors import (
    BusClosed,
    BusError,
    BusTimeout,
    BusUnavailable,
    UnsafeHome,
    InvalidEvent,
    MessageTooLarge,
    PublishTimeout,
    RemoteError,
    SessionConflict,
    SessionError,
    SessionNotFound,
    SlowSubscriberError,
)
from sdk.event import Event, Session
from sdk.security import KeyPaths
from sdk.subscription import Subscription

__all__ = [
    "Bus",
    "BusClosed",
    "BusError",
    "BusTimeout",
    "BusUnavailable",
    "UnsafeHome",
    "Event",
    "InvalidEvent",
    "KeyPaths",
    "MessageTooLarge",
    "PublishTimeout",
    "RemoteError",
    "Session",
    "SessionConflict",
    "SessionError",
    "SessionNotFound",
    "SlowSubscriberError",
    "Subscription",
    "connect",
]

from sdk import aio  # noqa: E402  (the asyncio API: sdk.aio.connect)
