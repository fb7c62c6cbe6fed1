"""The bench's peer discovery and server handling: missing peers are named with how to install
them; servers it starts bind where it says and stop by pid."""

import os
import signal
from pathlib import Path

import zmq

from bench import peers


def test_a_missing_binary_is_skipped_with_the_install_hint(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(peers, "_SBIN", ())
    found = peers.discover({"redis", "nats"})
    assert set(found) == {"redis", "nats"}
    for name, binary in (("redis", "redis-server"), ("nats", "nats-server")):
        assert found[name].ok is False
        assert found[name].reason == f"{binary} not found; install the peers with `make bench-peers`"


def test_only_requested_peers_are_looked_up() -> None:
    assert peers.discover(set()) == {}


def test_find_binary_looks_beyond_path(monkeypatch, tmp_path: Path) -> None:
    tool = tmp_path / "sbin" / "some-server"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(peers, "_SBIN", (str(tool.parent),))
    assert peers.find_binary("some-server") == str(tool)
    assert peers.find_binary("no-such-server") is None


def test_free_port_is_bindable_on_loopback() -> None:
    import socket

    port = peers.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_zmq_proxy_forwards_and_stops_by_pid(tmp_path: Path) -> None:
    server = peers.start_zmq_proxy(tmp_path)
    try:
        assert server.alive()
        ctx = zmq.Context()
        pub, sub = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB)
        for s in (pub, sub):
            s.linger = 0
        pub.connect(server.wiring["proxy"]["in"])
        sub.connect(server.wiring["proxy"]["out"])
        sub.subscribe(b"t")
        assert pub.poll(5000), "the proxy did not forward the subscription"
        assert pub.recv() == b"\x01t"
        pub.send_multipart([b"t", b"hello"])
        assert sub.poll(5000)
        assert sub.recv_multipart() == [b"t", b"hello"]
        pub.close()
        sub.close()
        ctx.term()
    finally:
        code = server.stop()
    assert code == -signal.SIGTERM and not server.alive()
    try:
        os.kill(server.pid, 0)
        still_there = True
    except ProcessLookupError:
        still_there = False
    assert still_there is False


def test_direct_wiring_shares_the_data_endpoint_with_probes(tmp_path: Path) -> None:
    w = peers.zmq_direct_wiring(tmp_path)
    assert w["channels"]["warm"] == w["channels"]["data"]
    assert len({w["channels"][c] for c in ("data", "ping", "pong")}) == 3
