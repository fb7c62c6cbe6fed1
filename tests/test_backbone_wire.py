"""The edge's raw reading of its NATS connection (broker/backbone/wire.py), on a real nats-server: a
routed subscription gets every message as it was sent, in order, whatever the reads cut it into;
the others still get nats-py's messages; an ordered consumer's deliveries go through its sequence
check, and a gap resets the consumer as nats-py does, the route kept on the new subscription.

On a server of their own: the session's cluster has nodes killed and started again by other tests,
and core NATS messages sent while routes form again may be lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from broker.backbone.wire import Wire
from tests.backbone import local_cluster

WAIT = 10.0


@pytest.fixture(scope="module")
def lone() -> Iterator[Any]:
    """One nats-server (with JetStream) for this module's tests."""
    yield from local_cluster(1)


async def _connect(server: Any) -> Any:
    import nats

    return await nats.connect(server.urls, connect_timeout=5)


def test_routed_messages_come_raw_and_in_order_and_the_others_as_nats_py_messages(lone, stream) -> None:
    async def main() -> None:
        nc, sender = await _connect(lone), await _connect(lone)
        try:
            wire = Wire.install(nc)
            assert wire is not None
            loop = asyncio.get_running_loop()
            raw: list[tuple[bytes, bytes, bytes, bytes | None]] = []
            left: list[Any] = []
            done = loop.create_future()
            n = 200

            def take(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
                if data == b"to nats-py":
                    return False
                raw.append((subject, reply, data, headers))
                return True

            async def keep(msg: Any) -> None:
                left.append(msg)
                if len(left) == 3 and not done.done():
                    done.set_result(None)

            routed = await nc.subscribe(f"{stream}.raw.*", cb=keep)
            wire.route(routed, take)
            await nc.subscribe(f"{stream}.plain", cb=keep)
            await nc.flush()
            big = bytes(range(256)) * 1000  # more than one read of the connection
            sent = []
            for i in range(n):
                data = big if i % 50 == 7 else b"%d" % i
                headers = {"Nats-Msg-Id": f"m{i}"} if i % 2 else None
                await sender.publish(f"{stream}.raw.{i}", data, reply=f"r.{i}" if i % 3 else "", headers=headers)
                sent.append((f"{stream}.raw.{i}".encode(), f"r.{i}".encode() if i % 3 else b"", data,
                             b"NATS/1.0\r\nNats-Msg-Id: m%d\r\n\r\n" % i if i % 2 else None))
            await sender.publish(f"{stream}.raw.x", b"to nats-py")
            await sender.publish(f"{stream}.plain", big, headers={"K": "v"})
            await sender.publish(f"{stream}.plain", b"small")
            await sender.flush()
            await asyncio.wait_for(done, WAIT)
            assert raw == sent
            assert [(m.subject, m.data, m.headers) for m in left] == [
                (f"{stream}.raw.x", b"to nats-py", None), (f"{stream}.plain", big, {"K": "v"}),
                (f"{stream}.plain", b"small", None)]
        finally:
            await sender.close()
            await nc.close()

    asyncio.run(main())


def test_an_ordered_consumer_delivers_each_stored_message_once_in_order_across_a_reset(lone, stream) -> None:
    from nats.js.api import StreamConfig

    async def main() -> None:
        nc = await _connect(lone)
        try:
            js = nc.jetstream(timeout=WAIT)
            await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.s"], num_replicas=1))
            wire = Wire.install(nc)
            assert wire is not None
            loop = asyncio.get_running_loop()
            got: list[tuple[int, bytes]] = []
            first, later = loop.create_future(), loop.create_future()
            n = 100

            def deliver(seq: int, data: bytes) -> None:
                got.append((seq, data))
                if len(got) == n and not first.done():
                    first.set_result(None)
                if len(got) == 2 * n and not later.done():
                    later.set_result(None)

            left: list[Any] = []

            async def by_nats_py(msg: Any) -> None:
                left.append(msg)

            for i in range(n):
                await js.publish(f"{stream}.s", b"%d" % i)
            consumer = await js.subscribe(f"{stream}.s", cb=by_nats_py, ordered_consumer=True)
            wire.ordered(consumer, deliver)
            await asyncio.wait_for(first, WAIT)
            sid = consumer._sub._id
            consumer._sub._jsi._dseq += 1  # as if the next delivery had been lost on the way
            for i in range(n, 2 * n):
                await js.publish(f"{stream}.s", b"%d" % i)
            await asyncio.wait_for(later, WAIT)
            assert consumer._sub._id != sid, "the consumer was not reset"
            assert got == [(i + 1, b"%d" % i) for i in range(2 * n)]
            assert left == []
        finally:
            await nc.close()

    asyncio.run(main())


def test_a_line_left_to_nats_py_and_a_payload_cut_in_two_keep_the_order_and_the_after_hook(lone, stream) -> None:
    """What a read can hold besides whole messages: the connection's own lines (here a PING, which
    nats-py's parser answers) between messages, and a message cut by the read's end."""

    async def main() -> None:
        nc = await _connect(lone)
        try:
            wire = Wire.install(nc)
            assert wire is not None
            seen: list[Any] = []

            def take(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
                seen.append(data)
                return True

            sub = await nc.subscribe(f"{stream}.x")
            wire.route(sub, take)
            wire.after.append(lambda: seen.append("after"))
            msg = lambda data: b"MSG %s.x %d %d\r\n%s\r\n" % (stream.encode(), sub._id, len(data), data)  # noqa: E731
            await nc._ps.parse(msg(b"a") + b"PING\r\n" + msg(b"b") + msg(b"c")[:-4])
            assert seen[-1] == "after" and [s for s in seen if s != "after"] == [b"a", b"b"]
            await nc._ps.parse(msg(b"c")[-4:] + msg(b"d"))
            assert seen[-1] == "after" and [s for s in seen if s != "after"] == [b"a", b"b", b"c", b"d"]
            await nc.flush()  # the PING was answered and the connection still works
        finally:
            await nc.close()

    asyncio.run(main())


def test_a_handler_that_raises_on_a_message_nats_py_parsed_leaves_the_read_loop_running(lone, stream) -> None:
    """The fast parser logs a routed handler's error and reads on; a message after a line left to
    nats-py's parser (a PING here) reaches the handler through Wire._process_msg, whose error would
    otherwise end nats-py's read loop (it logs 'encountered error' and stops reading for good)."""

    async def main() -> None:
        nc = await _connect(lone)
        try:
            wire = Wire.install(nc)
            assert wire is not None
            seen: list[bytes] = []

            def take(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
                if data == b"boom":
                    raise RuntimeError("a handler's bug")
                seen.append(data)
                return True

            sub = await nc.subscribe(f"{stream}.x")
            wire.route(sub, take)
            msg = lambda data: b"MSG %s.x %d %d\r\n%s\r\n" % (stream.encode(), sub._id, len(data), data)  # noqa: E731
            await nc._ps.parse(msg(b"boom") + msg(b"a"))  # the fast parser's own loop
            await nc._ps.parse(b"PING\r\n" + msg(b"boom") + msg(b"b"))  # through nats-py's parser
            assert seen == [b"a", b"b"]
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(main())
