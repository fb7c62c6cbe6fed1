"""pryxbus SDK: publish and subscribe to versioned events, keep sessions. Hides every socket.

>>> import sdk
>>> with sdk.connect() as bus:
...     bus.publish("channel:message", {"text": "hi"})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdk import aio
    from sdk.bus import Bus, connect
    from sdk.errors import (
        BusClosed,
        BusError,
        BusTimeout,
        BusUnavailable,
        InvalidEvent,
        MessageTooLarge,
        PublishTimeout,
        RemoteError,
        SessionConflict,
        SessionError,
        SessionNotFound,
        SlowSubscriberError,
        UnsafeHome,
    )
    from sdk.event import Event, Session
    from sdk.security import KeyPaths
    from sdk.subscription import Subscription

_HOMES = {
    "Bus": "sdk.bus",
    "connect": "sdk.bus",
    "Event": "sdk.event",
    "Session": "sdk.event",
    "KeyPaths": "sdk.security",
    "Subscription": "sdk.subscription",
    **dict.fromkeys(
        (
            "BusClosed", "BusError", "BusTimeout", "BusUnavailable", "UnsafeHome", "InvalidEvent", "MessageTooLarge",
            "PublishTimeout", "RemoteError", "SessionConflict", "SessionError", "SessionNotFound",
            "SlowSubscriberError",
        ),
        "sdk.errors",
    ),
}
"""Where each public name lives. They are imported when first used (PEP 562), so that the broker's
processes, which need only sdk.transport and sdk.security, do not import the whole SDK and asyncio
(~0.1 s of CPU for every process a stack or a test starts)."""

__all__ = sorted(_HOMES) + ["aio"]


def __getattr__(name: str) -> Any:
    if name == "aio":  # the asyncio API: sdk.aio.connect
        return importlib.import_module("sdk.aio")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
