"""Security basics (issue 6): ipc sockets live in a home only its owner can enter."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from tests.helpers import start_part


def test_ipc_sockets_live_in_a_0700_home(xprocess) -> None:
    """A broker started on a fresh (or too open) home makes it 0700 before binding its sockets."""
    home = Path(tempfile.mkdtemp(prefix="pxb-", dir="/tmp"))
    home.chmod(0o755)  # an operator's too-open directory
    part = start_part(xprocess, home, "broker")
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("pub.sock", "sub.sock", "con.sock"):
            assert stat.S_ISSOCK((home / name).stat().st_mode), name
    finally:
        part.stop()


def _raw_request(endpoint: str, request: dict) -> dict:
    import msgpack
    import zmq

    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.rcvtimeo = 5000
        sock.connect(endpoint)
        sock.send(msgpack.packb(request))
        return msgpack.unpackb(sock.recv())
    finally:
        ctx.destroy(linger=0)


def test_requests_with_huge_containers_are_refused_not_decoded(home: Path, start) -> None:
    """msgpack unpack limits: a request whose array is over the limit gets bad_request, and the
    servers go on answering (issue 6, untrusted input bounded)."""
    from schemas.endpoints import Endpoints
    from schemas.sessions import MAX_REQUEST_ITEMS

    start("broker")
    start("session-service", "--no-events")
    ep = Endpoints.ipc(home)
    big = list(range(MAX_REQUEST_ITEMS + 1))
    reply = _raw_request(ep.sessions, {"op": "get", "id": big})
    assert (reply["ok"], reply["code"]) == (False, "bad_request")
    assert _raw_request(ep.sessions, {"op": "ping"})["ok"] is True
    reply = _raw_request(ep.control, {"op": "ping", "pad": list(range(1025))})
    assert (reply["ok"], reply["code"]) == (False, "bad_request")
    assert _raw_request(ep.control, {"op": "ping"})["ok"] is True
