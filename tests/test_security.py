"""Security basics (issue 6): ipc sockets live in a home only its owner can enter."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import sdk
from broker.sessions.store import SessionStore
from schemas.endpoints import Endpoints, HomeNotOwned
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


NOBODY = 65534
"""Another user's uid (``nobody``): the tests run as root, which can chown to it."""


def _pryxbus(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parent.parent)


def test_a_home_or_file_another_user_owns_is_refused(home: Path) -> None:
    """Issue 16: root ran ``up`` in a directory another user made; it chmod'ed it 0700 and used it,
    but the owner could still read the databases and replace ``ses.sock``. Now it is refused, as
    are such files in a home of ours, and ``--db`` elsewhere; nothing is changed first."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    theirs = Path(tempfile.mkdtemp(prefix="pxb-theirs-", dir="/tmp"))
    try:
        theirs.chmod(0o755)
        os.chown(theirs, NOBODY, NOBODY)
        for part in ("up", "broker", "session-service"):
            done = _pryxbus(theirs, part)
            assert done.returncode == 1, done.stderr
            assert f"the home {theirs} belongs to nobody (uid {NOBODY})" in done.stderr and "Traceback" not in done.stderr
        assert stat.S_IMODE(theirs.stat().st_mode) == 0o755 and list(theirs.iterdir()) == []
    finally:
        theirs.rmdir()

    planted = home / "sessions.db"
    planted.write_bytes(b"")
    os.chown(planted, NOBODY, NOBODY)
    done = _pryxbus(home, "session-service")
    assert done.returncode == 1 and f"the file {planted} belongs to nobody" in done.stderr, done.stderr
    planted.unlink()
    elsewhere = Path(tempfile.mkdtemp(prefix="pxb-db-", dir="/tmp"))
    try:
        os.chown(elsewhere, NOBODY, NOBODY)
        done = _pryxbus(home, "session-service", "--db", str(elsewhere / "s.db"))
        assert done.returncode == 1, done.stderr
        assert f"the directory of the database {elsewhere} belongs to nobody" in done.stderr, done.stderr
        assert list(elsewhere.iterdir()) == []
    finally:
        elsewhere.rmdir()


def test_databases_and_sockets_are_private_to_their_user(home: Path, start) -> None:
    """Issue 16: sessions.db and events.db were created 0644, readable by every user who could
    reach them; an existing database left so is made private at start."""
    SessionStore(home / "sessions.db").close()  # as an earlier pryxbus left it: 0644
    (home / "sessions.db").chmod(0o644)
    start("broker"), start("session-service"), start("event-log")
    for path in home.iterdir():
        if path.is_file() or path.is_socket():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
    assert {"sessions.db", "events.db", "ses.sock", "pub.sock", "log.sock"} <= {p.name for p in home.iterdir()}


def test_clients_refuse_a_home_another_user_owns(home: Path) -> None:
    """Issue 16: clients talked through another user's home (whose owner could replace its
    sockets and capture requests); the SDK refuses to resolve it, as ssh refuses such a ~/.ssh."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    os.chown(home, NOBODY, NOBODY)
    with pytest.raises(sdk.UnsafeHome, match="belongs to nobody"):
        sdk.connect(home, timeout=1)
    with pytest.raises(HomeNotOwned):
        Endpoints.for_home(home)
    done = _pryxbus(home, "sessions", "list")
    assert done.returncode == 1 and "belongs to nobody" in done.stderr and "Traceback" not in done.stderr, done.stderr
    os.chown(home, 0, 0)
    home.chmod(0o777)
    with pytest.raises(sdk.UnsafeHome, match="can be written by other users"):
        sdk.connect(home, timeout=1)
