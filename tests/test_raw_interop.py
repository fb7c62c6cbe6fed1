"""The wire protocol as written in schemas/PROTOCOL.md is enough: raw pyzmq + msgpack + struct, both ways."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import msgpack
import zmq

import sdk
from helpers import finish, python_process

# Runs in its own process and imports nothing from pryxbus: only what PROTOCOL.md tells it.
RAW_PUBLISHER = r"""
import struct, sys, time
import msgpack, zmq

home = sys.argv[1]
ctx = zmq.Context()
req = ctx.socket(zmq.REQ); req.linger = 0
req.connect(f"ipc://{home}/con.sock")                                  # section 1
req.send(msgpack.packb({"op": "ping"}))                                # section 8
assert req.poll(5000), "no ping reply"
limit = msgpack.unpackb(req.recv(), raw=False)["result"]["max_event_size"]

pub = ctx.socket(zmq.XPUB)                                             # section 4
pub.setsockopt(zmq.XPUB_NODROP, 1)
pub.sndtimeo = 5000
pub.linger = 5000
pub.connect(f"ipc://{home}/pub.sock")
assert pub.poll(5000, zmq.POLLIN), "the broker's subscription never came"
assert pub.recv() == b"\x01"
for i, (topic, session_id, payload) in enumerate([
    ("channel:message", "s-raw", {"text": "from raw", "i": 0}),
    ("agent:spawned", None, {"agent_id": "a1"}),
    ("channel:message", None, [1, "two", 3.0, None, b"\x00bin"]),
]):
    body = msgpack.packb([1, 1700000000.0 + i, "raw-pub", session_id, payload], use_bin_type=True)
    assert body[0] == 0x95 and len(body) <= limit                      # section 3
    pub.send(topic.encode(), zmq.SNDMORE)
    pub.send(body)
pub.close(); req.close(); ctx.term()
assert not [m for m in sys.modules if m.split(".")[0] in ("sdk", "schemas", "broker")]
print("sent")
"""


def test_raw_publisher_is_heard_by_the_sdk(home: Path, bus: sdk.Bus) -> None:
    with bus.subscribe("channel:message", "agent:*") as sub:
        assert finish(python_process(RAW_PUBLISHER, str(home))) == "sent\n"
        events = [sub.recv(timeout=5) for _ in range(3)]
    assert [(e.type, e.version, e.seq, e.ts, e.source, e.session_id, e.payload) for e in events] == [
        ("channel:message", 1, 1, 1700000000.0, "raw-pub", "s-raw", {"text": "from raw", "i": 0}),
        ("agent:spawned", 2, 1, 1700000001.0, "raw-pub", None, {"agent_id": "a1"}),
        ("channel:message", 3, 2, 1700000002.0, "raw-pub", None, [1, "two", 3.0, None, b"\x00bin"]),
    ]


def raw_subscriber(ctx: zmq.Context, home: Path, prefixes: list[bytes]) -> zmq.Socket:
    """A SUB socket made live with the sync handshake of PROTOCOL.md §6 (nothing from the SDK)."""
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.connect(f"ipc://{home}/sub.sock")
    for prefix in prefixes:
        sub.subscribe(prefix)
    token = b"\x00sync:" + uuid.uuid4().hex.encode()
    sub.subscribe(token)
    while True:
        assert sub.poll(5000), "the broker never answered the sync subscription"
        topic, stamp, body = sub.recv(), sub.recv(), sub.recv()
        if topic == token:
            assert (stamp, body) == (bytes(16), b"")
            break
    sub.unsubscribe(token)
    return sub


def raw_receive(sub: zmq.Socket) -> tuple[str, int, int, list]:
    """One event, decoded by hand from its three frames (PROTOCOL.md §5)."""
    while True:
        assert sub.poll(5000), "no event within 5s"
        frames = sub.recv_multipart()
        assert len(frames) == 3
        topic, stamp, body = frames
        if topic[:1] == b"\x00":
            continue  # someone's sync reply
        version, topic_seq = struct.unpack("!QQ", stamp)
        return topic.decode("utf-8"), version, topic_seq, msgpack.unpackb(body, raw=False)


def test_sdk_publisher_is_heard_by_a_raw_subscriber(home: Path, bus: sdk.Bus) -> None:
    ctx = zmq.Context()
    try:
        everything = raw_subscriber(ctx, home, [b""])
        agents = raw_subscriber(ctx, home, [b"agent:"])
        bus.publish("channel:message", {"text": "hi"}, session_id="s-1")
        bus.publish("agent:spawned", {"agent_id": "a1"})
        bus.publish("channel:message", None)
        got = [raw_receive(everything) for _ in range(3)]
        assert [(t, v, s, body[0], body[2], body[3], body[4]) for t, v, s, body in got] == [
            ("channel:message", 1, 1, 1, "test", "s-1", {"text": "hi"}),
            ("agent:spawned", 2, 1, 1, "test", None, {"agent_id": "a1"}),
            ("channel:message", 3, 2, 1, "test", None, None),
        ]
        assert all(isinstance(body[1], float) for *_, body in got)
        assert raw_receive(agents)[:3] == ("agent:spawned", 2, 1)
    finally:
        ctx.destroy(linger=0)
