"""CURVE authentication (issue 6, DESIGN.md §4.6): keys, the allow-list, and the fail-closed matrix.

Against a ``--curve`` broker and session service, over ipc and over tcp on 127.0.0.1: a client
without keys, a valid but unlisted keypair, a client expecting another server key, and a listed
keypair. Only the last gets in; the others get ``BusUnavailable`` within their short timeout.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq.auth

import sdk
from sdk.sessions import SessionClient
from sdk.security import KeyPaths
from tests.helpers import REPO, wait_for

REFUSED_TIMEOUT = 0.3
"""Seconds a refused client waits per attempt (a refused CURVE handshake never answers)."""


def pryxbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], cwd=REPO, capture_output=True, text=True, timeout=30
    )


def generate(home: Path) -> None:
    done = pryxbus("keys", "generate", "--home", str(home))
    assert done.returncode == 0, done.stderr


@pytest.fixture(params=["ipc", "tcp"])
def curve_stack(request, home: Path, start) -> Path:
    """A --curve broker and session service in ``home`` (over ipc, or tcp on 127.0.0.1)."""
    generate(home)
    tcp = ("--tcp", "127.0.0.1:0") if request.param == "tcp" else ()  # each records its ports in the home
    start("broker", "--curve", *tcp)
    start("session-service", "--curve", "--no-events", *tcp)
    return home


def other_keys(home: Path) -> tuple[Path, Path]:
    """A valid keypair nobody listed: (public file, secret file)."""
    d = home / "stranger"
    d.mkdir()
    public, secret = zmq.auth.create_certificates(d, "stranger")
    return Path(public), Path(secret)


def cases(home: Path) -> dict[str, object]:
    """``curve=`` option per refused client."""
    own = KeyPaths.for_home(home)
    stranger_public, stranger_secret = other_keys(home)
    return {
        "no keys": False,
        "unlisted keypair": KeyPaths(stranger_secret, own.server_public),
        "wrong server key": KeyPaths(own.client_secret, stranger_public),
    }


def test_only_a_listed_key_gets_in(curve_stack: Path) -> None:
    home = curve_stack
    for what, curve in cases(home).items():
        with pytest.raises(sdk.BusUnavailable):
            sdk.connect(home, timeout=REFUSED_TIMEOUT, curve=curve).close()
            pytest.fail(f"broker let in a client with {what}")
        client = SessionClient.open(home, timeout=REFUSED_TIMEOUT, retries=0, curve=curve)
        try:
            with pytest.raises(sdk.BusUnavailable):
                client.list()
                pytest.fail(f"session service let in a client with {what}")
        finally:
            client.close()

    with sdk.connect(home, timeout=5.0) as bus:  # curve=None: the home's keys exist, so CURVE
        assert bus.curve is not None
        with bus.subscribe("auth:*") as sub:
            bus.publish("auth:checked", {"n": 1})
            event = sub.recv(timeout=5.0)
        assert (event.type, event.payload) == ("auth:checked", {"n": 1})
        session = bus.sessions.create("behind CURVE")
        assert bus.sessions.get(session.id).title == "behind CURVE"


def test_an_added_key_gets_in_after_a_restart(home: Path, start) -> None:
    """``keys add`` lists a stranger's public key; a --curve broker started afterwards lets it in."""
    generate(home)
    stranger_public, stranger_secret = other_keys(home)
    done = pryxbus("keys", "add", "--home", str(home), str(stranger_public))
    assert done.returncode == 0, done.stderr
    assert (home / "keys" / "clients" / "stranger.key").is_file()
    start("broker", "--curve")
    curve = KeyPaths(stranger_secret, KeyPaths.for_home(home).server_public)
    with sdk.connect(home, timeout=5.0, curve=curve) as bus:
        assert bus.stats()["version"] == 0


def test_a_curve_server_without_its_allow_list_refuses_to_start(home: Path) -> None:
    for part in ("broker", "session-service", "event-log", "up"):
        done = pryxbus(part, "--curve", "--home", str(home))
        assert done.returncode != 0, part
        assert "ready" not in done.stdout, part
        assert f"the allow-list directory {home / 'keys' / 'clients'} is missing" in done.stderr, part
        assert "pryxbus keys generate" in done.stderr, part


def test_keys_generate_modes_and_no_overwrite(home: Path) -> None:
    generate(home)
    keys = home / "keys"
    files = ["server.key", "server.key_secret", "client.key", "client.key_secret", "clients/client.key"]
    for name in files:
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
    for d in (home, keys, keys / "clients"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    before = (keys / "server.key_secret").read_bytes()

    again = pryxbus("keys", "generate", "--home", str(home))
    assert again.returncode == 1
    assert "keys exist already" in again.stderr and "--force" in again.stderr
    assert (keys / "server.key_secret").read_bytes() == before

    forced = pryxbus("keys", "generate", "--home", str(home), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (keys / "server.key_secret").read_bytes() != before
    # the new client key replaces the old one in the allow-list
    assert [p.name for p in (keys / "clients").iterdir()] == ["client.key"]
    assert (keys / "clients" / "client.key").read_bytes() == (keys / "client.key").read_bytes()


def test_keys_add_refuses_a_secret_key(home: Path) -> None:
    generate(home)
    done = pryxbus("keys", "add", "--home", str(home), str(home / "keys" / "client.key_secret"))
    assert done.returncode == 1
    assert "holds a secret key" in done.stderr


def test_a_non_loopback_tcp_host_without_curve_warns(home: Path) -> None:
    """Binding 0.0.0.0 would expose the bus, so use a port that cannot bind: only the warning matters."""
    done = pryxbus("broker", "--home", str(home), "--tcp", "0.0.0.0:99999")
    assert done.returncode != 0
    assert "without --curve" not in done.stderr  # a bad spec fails before anything else
    done = pryxbus("broker", "--home", str(home), "--tcp", "192.0.2.1:7000")  # TEST-NET: bind fails
    assert "pryxbus: warning: listening on 192.0.2.1 without --curve" in done.stderr
    assert "ready" not in done.stdout


def test_a_curve_stack_logs_and_replays(home: Path, start) -> None:
    """The event log subscribes to a --curve broker with the home's client keys, and serves replays."""
    generate(home)
    start("broker", "--curve")
    start("event-log", "--curve")
    with sdk.connect(home, timeout=5.0) as bus:
        with bus.subscribe("auth:*") as sub:
            bus.publish("auth:logged", {"n": 1})
            live = sub.recv(timeout=5.0)
        expected = [(live.version, "auth:logged")]
        wait_for(  # the log writes in its own time: poll the replay until it has the event
            lambda: [(ev.version, ev.type) for ev in bus.replay("auth:*", since=0)],
            lambda replayed: replayed == expected,
            what="the event in the log",
        )


def test_an_empty_allow_list_lets_nobody_in(home: Path, start) -> None:
    generate(home)
    (home / "keys" / "clients" / "client.key").unlink()
    start("broker", "--curve")
    with pytest.raises(sdk.BusUnavailable):
        sdk.connect(home, timeout=REFUSED_TIMEOUT).close()


def test_a_curve_socket_without_an_authenticator_refuses_even_a_listed_key(home: Path) -> None:
    """Fail closed at the libzmq level (DESIGN.md §4.6): no ZAP handler in the context, nobody in."""
    from broker.security import ServerKeys, secure_server
    from sdk.security import load_client, secure_client

    generate(home)
    keys = ServerKeys.load(home)
    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.REP)
        server.linger = 0
        secure_server(server, keys)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = ctx.socket(zmq.REQ)
        client.linger = 0
        secure_client(client, load_client(KeyPaths.for_home(home)))
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"let me in")
        assert server.poll(1000) == 0  # the handshake never completes: nothing arrives
    finally:
        ctx.destroy(linger=0)


def test_refused_connections_are_logged_and_counted(home: Path, start) -> None:
    """Issue 16: a --curve stack refused strangers without a word. Each refusal is counted in the
    parts' stats (and so in top and /metrics) and logged, at most one line per interval."""
    from schemas.endpoints import Endpoints

    generate(home)
    parts = {"broker": start("broker", "--curve"), "sessions": start("session-service", "--curve", "--no-events")}
    endpoints = Endpoints.for_home(home)
    stranger_public, stranger_secret = other_keys(home)
    public, secret = zmq.auth.load_certificate(stranger_secret)
    ctx = zmq.Context()
    strangers = []  # open until their one attempt each has been refused
    try:
        for endpoint in (endpoints.control, endpoints.control, endpoints.control, endpoints.sessions):
            sock = ctx.socket(zmq.DEALER)
            strangers.append(sock)
            sock.linger = 0
            sock.reconnect_ivl = -1  # one attempt, so one refusal
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = zmq.auth.load_certificate(KeyPaths.for_home(home).server_public)[0]
            sock.connect(endpoint)
        with sdk.connect(home, timeout=5.0) as bus:
            wait_for(bus.stats, lambda s: s["curve_refused"] == 3, what="3 refusals at the broker")
            wait_for(bus.sessions.stats, lambda s: s["curve_refused"] == 1, what="1 refusal at the session service")
    finally:
        ctx.destroy(linger=0)
    lines = [line for line in parts["broker"].log.splitlines() if "refused a CURVE connection" in line]
    assert len(lines) == 1 and "Unknown key" in lines[0] and "1 refused in all" in lines[0], lines
    top = subprocess.run([sys.executable, "-m", "broker", "top", "--once", "--home", str(home)],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert "curve         4 connections refused (broker 3, sessions 1)" in top.stdout, top.stdout + top.stderr
