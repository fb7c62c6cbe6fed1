"""Garbage from raw sockets is counted and skipped; the broker keeps serving everyone else exactly."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

import sdk
from helpers import control, raw_publisher, stats, wait_stats
from schemas.endpoints import Endpoints

GOOD_BODY = msgpack.packb([1, 1.0, "raw", None, {"ok": True}], use_bin_type=True)

MALFORMED = [  # wrong frame counts
    [b"one:frame"],
    [GOOD_BODY],
    [b"three:frames", GOOD_BODY, b"extra"],
    [b"four:frames", GOOD_BODY, b"x", b"y"],
]
REJECTED = [  # two frames, but not an event
    [b"\xff\xfe:bad", GOOD_BODY],  # topic not UTF-8
    [b"a b", GOOD_BODY],  # topic outside the grammar
    [b"agent:*", GOOD_BODY],  # a pattern is not a type
    [b"", GOOD_BODY],  # empty topic
    [b"x" * 256, GOOD_BODY],  # topic too long
    [b"\x00sync:forged", GOOD_BODY],  # control topics are the broker's
    [b"garbage:body", b"not msgpack at all"],
    [b"garbage:body", b""],
    [b"garbage:body", msgpack.packb({"not": "an envelope"})],
]


def send(sock: zmq.Socket, frames: list[bytes]) -> None:
    for frame in frames[:-1]:
        sock.send(frame, zmq.SNDMORE)
    sock.send(frames[-1])


def test_malformed_and_rejected_messages_are_counted_and_skipped(home: Path, endpoints: Endpoints, bus: sdk.Bus) -> None:
    ctx = zmq.Context()
    try:
        raw = raw_publisher(ctx, endpoints.publish)
        with bus.subscribe() as sub:
            for i, frames in enumerate(MALFORMED + REJECTED):
                send(raw, frames)
                bus.publish("good:event", {"i": i})  # interleaved with a well-behaved publisher
            send(raw, [b"good:raw", GOOD_BODY])  # the raw socket is still in step after all that
            n = len(MALFORMED) + len(REJECTED)
            got = [sub.recv(timeout=5) for _ in range(n + 1)]
            s = wait_stats(
                ctx, endpoints.control, lambda s: s["malformed"] + s["rejected"] == n, what="all garbage counted"
            )
        assert (s["malformed"], s["rejected"], s["events_in"], s["topics"]) == (
            len(MALFORMED),
            len(REJECTED),
            n + 1,
            {"good:event": n, "good:raw": 1},
        )
        good = sorted((e for e in got if e.type == "good:event"), key=lambda e: e.version)
        assert [e.payload["i"] for e in good] == list(range(n))
        assert [e.seq for e in good] == list(range(1, n + 1))
        assert sorted(e.version for e in got) == list(range(1, n + 2))
        assert [(e.type, e.payload) for e in got if e.type == "good:raw"] == [("good:raw", {"ok": True})]
        assert (sub.lost, sub.malformed) == (0, 0)
    finally:
        ctx.destroy(linger=0)


def test_a_body_with_the_mark_but_garbage_inside_is_skipped_by_the_sdk(endpoints: Endpoints, bus: sdk.Bus) -> None:
    ctx = zmq.Context()
    try:
        raw = raw_publisher(ctx, endpoints.publish)
        with bus.subscribe("odd:**") as sub:
            send(raw, [b"odd:one", b"\x95garbage"])  # the broker checks only the first byte
            # Two connections: a broker that finds both events waiting takes turns between them,
            # so ours goes once the raw one has its version.
            wait_stats(ctx, endpoints.control, lambda s: s["version"] == 1, what="the raw event stamped")
            bus.publish("odd:two", None)
            event = sub.recv(timeout=5)
            assert (event.type, event.version, sub.malformed) == ("odd:two", 2, 1)
    finally:
        ctx.destroy(linger=0)


def test_garbage_connections_do_not_hurt(home: Path, endpoints: Endpoints, bus: sdk.Bus) -> None:
    rng = random.Random(2).randbytes  # reproducible garbage
    for name in ("pub.sock", "sub.sock", "con.sock"):
        for garbage in (rng(1), rng(64), b"\xff" + bytes(8) + b"\x7f" + rng(500), rng(70_000)):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(home / name))
                try:
                    s.sendall(garbage)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the broker hung up on us first: fine
    with bus.subscribe() as sub:
        for i in range(10):
            bus.publish("after:garbage", i)
        assert [(e.version, e.payload) for e in (sub.recv(timeout=5) for _ in range(10))] == [
            (i + 1, i) for i in range(10)
        ]
    ctx = zmq.Context()
    try:
        s = stats(ctx, endpoints.control)
        # libzmq still speaks the old ZMTP/1.0 framing, so some garbage decodes as messages: those
        # land in malformed/rejected. None of it can become an event.
        assert (s["events_in"], s["topics"]) == (10, {"after:garbage": 10})
    finally:
        ctx.destroy(linger=0)


def test_control_endpoint_answers_garbage_with_errors(endpoints: Endpoints, bus: sdk.Bus) -> None:
    ctx = zmq.Context()
    try:
        for request, code in [
            ({"op": "launch"}, "unknown_op"),
            ({"op": 7}, "bad_request"),
            ({"no": "op"}, "bad_request"),
            ([1, 2, 3], "bad_request"),
        ]:
            reply = control(ctx, endpoints.control, request)
            assert (reply["ok"], reply["code"]) == (False, code), reply
            assert isinstance(reply["message"], str) and reply["message"]
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.connect(endpoints.control)
        req.send(b"\xc1 not msgpack")
        assert req.poll(5000)
        assert msgpack.unpackb(req.recv(), raw=False)["code"] == "bad_request"
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(endpoints.control)
        dealer.send_multipart([b"", b"x", b"y"])  # too many frames for a request
        assert dealer.poll(5000)
        assert msgpack.unpackb(dealer.recv_multipart()[-1], raw=False)["code"] == "bad_request"
        reply = control(ctx, endpoints.control, {"op": "ping"})
        assert reply["ok"] and reply["result"]["status"] == "ok"
    finally:
        ctx.destroy(linger=0)


def test_a_subscription_longer_than_any_topic_disconnects_only_its_subscriber(endpoints: Endpoints, bus: sdk.Bus) -> None:
    """Each subscribed byte costs the broker ~48 bytes of libzmq trie: before, subscriptions of up to
    4096 bytes were kept (20,000 of them from one raw socket grew the broker by 3.8 GB); now one
    longer than a topic can be (256 bytes with its command byte) drops that connection."""
    ctx = zmq.Context()
    try:
        with bus.subscribe() as sub:
            fine = ctx.socket(zmq.XSUB)
            fine.linger = 0
            fine.connect(endpoints.subscribe)
            fine.send(b"\x01" + b"p" * 255)  # the longest useful prefix is kept
            hostile = ctx.socket(zmq.XSUB)
            hostile.linger = 0
            monitor = hostile.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            hostile.connect(endpoints.subscribe)
            hostile.send(b"\x01" + b"p" * 256)
            assert monitor.poll(5000), "the broker kept a subscription longer than any topic"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
            fine.send(b"\x01\x00sync:fine")  # answered: the 256-byte subscription did not cost it
            assert fine.poll(5000), "the subscriber with a 255-byte prefix got no sync reply"
            assert fine.recv_multipart() == [b"\x00sync:fine", bytes(16), b""]
            bus.publish("after:it", 1)
            assert sub.recv(timeout=5).type == "after:it"
            hostile.disable_monitor()
    finally:
        ctx.destroy(linger=0)
