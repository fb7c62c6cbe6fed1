"""Publish/subscribe clients for each measured system, with the loops the scenarios run inside them.

Every system gets the same high-level operations (``blast``, ``count``, ``paced``, ``record``,
``echo``, ``ping``), each one tight loop written the way that system's docs recommend for speed:
the pryxbus SDK through the broker; pyzmq ``send_multipart``/``recv_multipart`` directly or through
``zmq.proxy``; redis-py with hiredis and pipelined publishing; nats-py (asyncio, in
``bench.clients_nats``) with a callback subscriber and batched flushes.

A *wiring* dict (made by the runner from the running servers) says how to reach a system; a client
lives in one side process and is closed by it.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

from bench.histogram import Histogram
from bench.schedule import Schedule, read_stamp, stamped_payload

CHANNELS = ("data", "warm", "ping", "pong")
HWM = 1_000_000
"""Queue limit for throughput runs: large enough that no measured run loses an event to an HWM."""
PIPELINE = 1000
"""Redis publishes per pipeline, NATS publishes per flush."""
BATCH_BYTES = 128 * 1024
"""Payload bytes per message when events are sent in batches (as pryxbus batches them)."""

_PROBE = struct.Struct("!I")


class Loss(Exception):
    """The system itself reported lost events (pryxbus's per-topic sequence)."""

    def __init__(self, lost: int, received: int) -> None:
        super().__init__(f"{lost} events lost after {received} received")
        self.lost = lost
        self.received = received


def topic_name(kind: str, channel: str) -> str:
    """The topic/channel/subject a system uses for one of the bench's channels."""
    return f"bench.{channel}" if kind == "nats" else f"bench:{channel}"


class SyncClient:
    """The loops, over three primitives a system provides: ``send``, ``recv``, ``close``."""

    kind = "?"

    def __init__(self, wiring: dict[str, Any]) -> None:
        self.wiring = wiring
        self.topics = {c: topic_name(self.kind, c) for c in CHANNELS}

    # -- primitives (per system) -----------------------------------------------------------

    def send(self, channel: str, payload: bytes) -> None:
        raise NotImplementedError

    def recv(self, timeout: float) -> tuple[str, bytes] | None:
        """One message as ``(channel, payload)``, or None after ``timeout`` seconds."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make sure everything sent so far has left this process."""

    def close(self) -> None:
        raise NotImplementedError

    # -- loops -----------------------------------------------------------------------------

    def probe(self, index: int, until: Any) -> int:
        """Send ``warm`` probes every 2 ms until ``until.poll()`` is true (the runner's 'go')."""
        sent = 0
        payload = _PROBE.pack(index)
        while not until.poll(0.002):
            self.send("warm", payload)
            self.flush()
            sent += 1
        return sent

    def wait_probes(self, publishers: int, timeout: float) -> None:
        """Return once a probe from each of ``publishers`` arrived: every path is live."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < publishers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"probes from {len(seen)} of {publishers} publishers arrived")
            msg = self.recv(min(remaining, 0.5))
            if msg is not None and msg[0] == "warm":
                seen.add(_PROBE.unpack(msg[1][:4])[0])

    def blast(self, payload: bytes, n: int) -> None:
        send = self.send
        for _ in range(n):
            send("data", payload)
        self.flush()

    def blast_batched(self, payload: bytes, n: int) -> None:
        """Send ``n`` events in batches, as this system's client batches them (else one by one)."""
        self.blast(payload, n)

    def count_batched(self, n: int, idle: float, size: int) -> tuple[int, int]:
        """:meth:`count` for events sent by :meth:`blast_batched` (``size``: payload bytes)."""
        return self.count(n, idle)

    def count(self, n: int, idle: float) -> tuple[int, int]:
        """Receive until ``n`` data messages arrived or none for ``idle`` s: ``(received, end_ns)``."""
        got = 0
        recv = self.recv
        while got < n:
            msg = recv(idle)
            if msg is None:
                break
            if msg[0] == "data":
                got += 1
        return got, time.monotonic_ns()

    def paced(self, schedule: Schedule, size: int, channel: str = "data") -> int:
        """Send stamped payloads on ``schedule`` (open loop); returns how many were sent late (>1 ms)."""
        late = 0
        send = self.send
        clock = time.monotonic_ns
        for index, due in schedule.batches():
            send(channel, stamped_payload(due, index, size))
            if clock() - due > 1_000_000:
                late += 1
        self.flush()
        return late

    def record(self, n: int, idle: float, channel: str = "data") -> tuple[int, int, Histogram]:
        """Like :meth:`count`, and record each message's latency from its due time."""
        hist = Histogram()
        got = 0
        recv = self.recv
        clock = time.monotonic_ns
        while got < n:
            msg = recv(idle)
            if msg is None:
                break
            if msg[0] == channel:
                hist.record(clock() - read_stamp(msg[1])[0])
                got += 1
        return got, clock(), hist

    def echo(self, idle: float) -> int:
        """Send every ``ping`` back as a ``pong`` until none arrives for ``idle`` s, or a 0-byte ping."""
        n = 0
        recv, send = self.recv, self.send
        while True:
            msg = recv(idle)
            if msg is None:
                return n
            channel, payload = msg
            if channel != "ping":
                continue
            if not payload:
                return n
            send("pong", payload)
            self.flush()
            n += 1

    def ping(self, schedule: Schedule, size: int, idle: float) -> tuple[int, Histogram]:
        """Pings on ``schedule``, pongs received in a thread; latency counted from each due time."""
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: result.update(zip(("got", "end", "hist"), self.record(schedule.count, idle, "pong"))),
            daemon=True,
        )
        thread.start()
        self.paced(schedule, size, "ping")
        thread.join()
        return result.get("got", 0), result.get("hist", Histogram())

    def handshake(self, timeout: float) -> None:
        """Ping (due time 0) until a pong comes back: the echo's and our own paths are live."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send("ping", stamped_payload(0, -1, 16))
            self.flush()
            end = time.monotonic() + 0.05
            while (left := end - time.monotonic()) > 0:
                msg = self.recv(left)
                if msg is not None and msg[0] == "pong":
                    self._drain(0.05)
                    return
        raise TimeoutError(f"no pong within {timeout:g}s")

    def _drain(self, quiet: float) -> None:
        while self.recv(quiet) is not None:
            pass

    def stop_echo(self) -> None:
        self.send("ping", b"")
        self.flush()


class PryxbusClient(SyncClient):
    """The pryxbus SDK at both ends, through the broker."""

    kind = "pryxbus"

    def __init__(self, wiring: dict[str, Any], *, subscribe: tuple[str, ...] = (), hwm: int = HWM, **_: Any) -> None:
        import sdk

        super().__init__(wiring)
        self._timeout_error = sdk.BusTimeout
        self._slow_error = sdk.SlowSubscriberError
        self.bus = sdk.connect(wiring["home"], name="bench", hwm=HWM, timeout=10.0)
        self.sub = None
        self._channel = {self.topics[c]: c for c in CHANNELS}
        if subscribe:
            self.sub = self.bus.subscribe(*(self.topics[c] for c in subscribe), hwm=hwm)

    def send(self, channel: str, payload: bytes) -> None:
        self.bus.publish(self.topics[channel], payload)

    def recv(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            ev = self.sub.recv(timeout=timeout)
        except self._timeout_error:
            return None
        except self._slow_error as e:
            raise Loss(e.lost, self.sub.received) from None
        return self._channel[ev.type], ev.payload

    def blast(self, payload: bytes, n: int) -> None:
        publish, topic = self.bus.publish, self.topics["data"]
        for _ in range(n):
            publish(topic, payload)

    def blast_batched(self, payload: bytes, n: int) -> None:
        publish_many, event = self.bus.publish_many, (self.topics["data"], payload)
        per = 4096
        for start in range(0, n, per):
            publish_many([event] * min(per, n - start))

    def count_batched(self, n: int, idle: float, size: int) -> tuple[int, int]:
        got = 0
        recv_many = self.sub.recv_many
        try:
            while got < n:
                events = recv_many(4096, idle)
                if not events:
                    break
                got += len(events)  # the bench's only subscribed types are data and warm
                for e in events:
                    if e.type != self.topics["data"]:
                        got -= 1
        except self._slow_error as e:
            raise Loss(e.lost, got) from None
        return got, time.monotonic_ns()

    def count(self, n: int, idle: float) -> tuple[int, int]:
        got = 0
        recv, data = self.sub.recv, self.topics["data"]
        try:
            while got < n:
                if recv(timeout=idle).type == data:
                    got += 1
        except self._timeout_error:
            pass
        except self._slow_error as e:
            raise Loss(e.lost, got) from None
        return got, time.monotonic_ns()

    def close(self) -> None:
        self.bus.close()


class ZmqClient(SyncClient):
    """Plain pyzmq PUB/SUB with the multipart helpers: direct (no broker) or through ``zmq.proxy``.

    Direct: the single side of a channel binds (the publisher, or the subscriber in fan-in).
    Proxy: everyone connects to the proxy's XSUB (publishers) and XPUB (subscribers).
    """

    kind = "zmq"

    def __init__(
        self,
        wiring: dict[str, Any],
        *,
        publish: tuple[str, ...] = (),
        subscribe: tuple[str, ...] = (),
        bind: tuple[str, ...] = (),
        hwm: int = HWM,
        **_: Any,
    ) -> None:
        import zmq

        super().__init__(wiring)
        self.zmq = zmq
        self.ctx = zmq.Context()
        self.pubs: dict[str, Any] = {}
        self.sub = None
        self._channel = {self.topics[c].encode(): c for c in CHANNELS}
        self._btopics = {c: t.encode() for c, t in self.topics.items()}
        by_endpoint: dict[str, Any] = {}
        for channel in publish:
            # Probes must travel the data's own connection to prove it live: channels that share
            # an endpoint (data and warm) share one socket.
            where = self._where(channel, "in")
            sock = by_endpoint.get(where)
            if sock is None:
                sock = self.ctx.socket(zmq.PUB)
                sock.sndhwm = HWM
                sock.linger = 10_000
                self._attach(sock, channel, "in", channel in bind)
                by_endpoint[where] = sock
            self.pubs[channel] = sock
        if subscribe:
            sock = self.ctx.socket(zmq.SUB)
            sock.rcvhwm = hwm
            sock.linger = 0
            attached = set()
            for channel in subscribe:
                where = self._where(channel, "out")
                if where not in attached:
                    self._attach(sock, channel, "out", channel in bind)
                    attached.add(where)
                sock.subscribe(self._btopics[channel])
            self.sub = sock

    def _where(self, channel: str, side: str) -> str:
        w = self.wiring
        return w["proxy"][side] if w.get("proxy") else w["channels"][channel]

    def _attach(self, sock: Any, channel: str, side: str, bind: bool) -> None:
        w = self.wiring
        if w.get("proxy"):
            sock.connect(w["proxy"][side])
        elif bind:
            sock.bind(w["channels"][channel])
        else:
            sock.connect(w["channels"][channel])

    def send(self, channel: str, payload: bytes) -> None:
        self.pubs[channel].send_multipart([self._btopics[channel], payload])

    def recv(self, timeout: float) -> tuple[str, bytes] | None:
        if not self.sub.poll(int(timeout * 1000)):
            return None
        topic, payload = self.sub.recv_multipart()
        return self._channel[topic], payload

    def blast(self, payload: bytes, n: int) -> None:
        send, topic = self.pubs["data"].send_multipart, self._btopics["data"]
        for _ in range(n):
            send([topic, payload])

    def blast_batched(self, payload: bytes, n: int) -> None:
        """Events concatenated into frames of up to BATCH_BYTES (fixed size: no lengths needed)."""
        send, topic = self.pubs["data"].send_multipart, self._btopics["data"]
        per = max(1, BATCH_BYTES // max(len(payload), 1))
        full = payload * per
        for start in range(0, n, per):
            k = min(per, n - start)
            send([topic, full if k == per else payload * k])

    def count_batched(self, n: int, idle: float, size: int) -> tuple[int, int]:
        sock = self.sub
        sock.rcvtimeo = int(idle * 1000)
        recv, data, again = sock.recv_multipart, self._btopics["data"], self.zmq.Again
        got = 0
        try:
            while got < n:
                topic, frame = recv()
                if topic == data:
                    got += len(frame) // size
        except again:
            pass
        finally:
            sock.rcvtimeo = -1
        return got, time.monotonic_ns()

    def count(self, n: int, idle: float) -> tuple[int, int]:
        sock = self.sub
        sock.rcvtimeo = int(idle * 1000)
        recv, data, again = sock.recv_multipart, self._btopics["data"], self.zmq.Again
        got = 0
        try:
            while got < n:
                if recv()[0] == data:
                    got += 1
        except again:
            pass
        finally:
            sock.rcvtimeo = -1
        return got, time.monotonic_ns()

    def close(self) -> None:
        for sock in set(self.pubs.values()):
            sock.close()
        if self.sub is not None:
            self.sub.close()
        self.ctx.term()


class RedisClient(SyncClient):
    """Redis pub/sub: redis-py with the hiredis parser; publishing pipelined in batches."""

    kind = "redis"

    def __init__(self, wiring: dict[str, Any], *, subscribe: tuple[str, ...] = (), **_: Any) -> None:
        import redis

        super().__init__(wiring)
        self.r = redis.Redis(host="127.0.0.1", port=wiring["port"])
        self.ps = None
        self._channel = {self.topics[c].encode(): c for c in CHANNELS}
        if subscribe:
            self.ps = self.r.pubsub(ignore_subscribe_messages=True)
            self.ps.subscribe(*(self.topics[c] for c in subscribe))
            # The server confirms each SUBSCRIBE: after the confirmations we are live.
            confirmed = 0
            while confirmed < len(subscribe):
                msg = self.ps.parse_response(block=True, timeout=10)
                if msg is None:
                    raise TimeoutError("redis did not confirm the subscription")
                if msg[0] in (b"subscribe", "subscribe"):
                    confirmed += 1

    def send(self, channel: str, payload: bytes) -> None:
        self.r.publish(self.topics[channel], payload)

    def recv(self, timeout: float) -> tuple[str, bytes] | None:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and msg["type"] == "message":
                return self._channel[msg["channel"]], msg["data"]
            if time.monotonic() >= deadline:
                return None

    def blast(self, payload: bytes, n: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        publish, execute, topic = pipe.publish, pipe.execute, self.topics["data"]
        for i in range(1, n + 1):
            publish(topic, payload)
            if i % PIPELINE == 0:
                execute()
        execute()

    def count(self, n: int, idle: float) -> tuple[int, int]:
        got = 0
        get, data = self.ps.get_message, self.topics["data"].encode()
        while got < n:
            msg = get(timeout=idle)
            if msg is None:
                break
            if msg["channel"] == data:
                got += 1
        return got, time.monotonic_ns()

    def close(self) -> None:
        if self.ps is not None:
            self.ps.close()
        self.r.close()


SYNC_CLIENTS: dict[str, type[SyncClient]] = {
    "pryxbus": PryxbusClient,
    "zmq": ZmqClient,
    "redis": RedisClient,
}


def open_client(wiring: dict[str, Any], **roles: Any) -> Any:
    """The client for ``wiring["kind"]``; roles: ``publish``, ``subscribe``, ``bind``, ``hwm``."""
    kind = wiring["kind"]
    if kind == "nats":
        from bench.clients_nats import NatsClient

        return NatsClient(wiring, **roles)
    return SYNC_CLIENTS[kind](wiring, **roles)
