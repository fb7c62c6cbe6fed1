"""Binding a server's sockets: the endpoint a socket listens on once bound, for ready lines."""

from __future__ import annotations

import zmq


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
