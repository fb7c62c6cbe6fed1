"""Binding a server's sockets (the endpoint a socket listens on once bound, for ready lines), and
reading their monitors."""

from __future__ import annotations

import struct
from typing import Any

import zmq

_MONITOR_EVENT = struct.Struct("=hi")


def parse_monitor_message(msg: list[bytes]) -> dict[str, Any]:
    """A socket monitor's message as ``{"event", "value", "endpoint"}``, as pyzmq's own
    ``zmq.utils.monitor.parse_monitor_message`` gives it; that module imports asyncio (~25 ms of
    every server's start), this does not.

    Raises:
        RuntimeError: not a monitor message.
    """
    if len(msg) != 2 or len(msg[0]) != _MONITOR_EVENT.size:
        raise RuntimeError(f"invalid monitor message: {msg!r}")
    event, value = _MONITOR_EVENT.unpack(msg[0])
    return {"event": event, "value": value, "endpoint": msg[1]}


def bind(socket: zmq.Socket, endpoint: str) -> str:
    """Bind ``socket`` to ``endpoint``; return where it listens: for ``tcp://HOST:0`` the port the
    system chose, else ``endpoint`` as given.

    Raises:
        zmq.ZMQError: the endpoint cannot be bound (a port in use, a bad address).
    """
    socket.bind(endpoint)
    if not (endpoint.startswith("tcp://") and endpoint.endswith(":0")):
        return endpoint
    last = socket.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)
