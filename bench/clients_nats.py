"""The NATS client for the bench: nats-py on its own asyncio loop, callback subscribers, batched flushes.

It offers the same loops as :class:`bench.clients.SyncClient`, each run as one coroutine on the
client's loop (so NATS pays no per-message bridge between sync and async code).
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from bench.clients import CHANNELS, PIPELINE, topic_name
from bench.histogram import Histogram
from bench.schedule import Schedule, read_stamp, stamped_payload

_PROBE = struct.Struct("!I")
_PENDING = 1 << 30  # subscriber-side pending limits: large, so a throughput run drops nothing


class NatsClient:
    kind = "nats"

    def __init__(self, wiring: dict[str, Any], *, subscribe: tuple[str, ...] = (), **_: Any) -> None:
        self.wiring = wiring
        self.topics = {c: topic_name("nats", c) for c in CHANNELS}
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.handlers: dict[str, Any] = {}
        self.nc = self._run(self._connect(subscribe))

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _connect(self, subscribe: tuple[str, ...]) -> Any:
        import nats

        nc = await nats.connect(
            f"nats://127.0.0.1:{self.wiring['port']}", allow_reconnect=False, connect_timeout=10
        )
        for channel in subscribe:
            await nc.subscribe(
                self.topics[channel],
                cb=self._callback(channel),
                pending_msgs_limit=_PENDING,
                pending_bytes_limit=_PENDING,
            )
        await nc.flush()  # the server has our subscriptions once it answers the flush's PING
        return nc

    def _callback(self, channel: str) -> Any:
        async def cb(msg: Any) -> None:
            handler = self.handlers.get(channel)
            if handler is not None:
                handler(msg.data)
            else:
                self.queue.put_nowait((channel, msg.data))

        return cb

    # -- the SyncClient loops ----------------------------------------------------------------

    def send(self, channel: str, payload: bytes) -> None:
        self._run(self.nc.publish(self.topics[channel], payload))

    def flush(self) -> None:
        self._run(self.nc.flush())

    def recv(self, timeout: float) -> tuple[str, bytes] | None:
        async def get() -> tuple[str, bytes] | None:
            try:
                return await asyncio.wait_for(self.queue.get(), timeout)
            except asyncio.TimeoutError:
                return None

        return self._run(get())

    def probe(self, index: int, until: Any) -> int:
        async def run() -> int:
            sent, payload = 0, _PROBE.pack(index)
            while not until.poll(0):
                await self.nc.publish(self.topics["warm"], payload)
                await self.nc.flush()
                sent += 1
                await asyncio.sleep(0.002)  # sync-ok: probe interval while waiting for 'go'
            return sent

        return self._run(run())

    def wait_probes(self, publishers: int, timeout: float) -> None:
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
        async def run() -> None:
            publish, flush, subject = self.nc.publish, self.nc.flush, self.topics["data"]
            for i in range(1, n + 1):
                await publish(subject, payload)
                if i % PIPELINE == 0:
                    await flush()
            await flush()

        self._run(run())

    async def _until(self, n: int, idle: float, progress: Any) -> None:
        """Wait until ``progress()`` reaches ``n`` or stops moving for ``idle`` seconds."""
        last, since = -1, time.monotonic()
        while True:
            now_count = progress()
            if now_count >= n:
                return
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since >= idle:
                return
            await asyncio.sleep(0.001)  # sync-ok: the callbacks run on this loop meanwhile

    def count(self, n: int, idle: float) -> tuple[int, int]:
        state = {"got": 0, "end": 0}

        def on_data(_data: bytes) -> None:
            state["got"] += 1
            if state["got"] == n:
                state["end"] = time.monotonic_ns()

        self.handlers["data"] = on_data
        self._drain_queue("data", on_data)
        self._run(self._until(n, idle, lambda: state["got"]))
        self.handlers.pop("data", None)
        return state["got"], state["end"] or time.monotonic_ns()

    def _drain_queue(self, channel: str, handler: Any) -> None:
        """Hand messages that were queued before a handler was installed to that handler."""
        keep = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            (handler(item[1]) if item[0] == channel else keep.append(item))
        for item in keep:
            self.queue.put_nowait(item)

    def record(self, n: int, idle: float, channel: str = "data") -> tuple[int, int, Histogram]:
        hist = Histogram()
        state = {"got": 0, "end": 0}
        clock = time.monotonic_ns

        def on_msg(data: bytes) -> None:
            hist.record(clock() - read_stamp(data)[0])
            state["got"] += 1
            if state["got"] == n:
                state["end"] = clock()

        self.handlers[channel] = on_msg
        self._drain_queue(channel, on_msg)
        self._run(self._until(n, idle, lambda: state["got"]))
        self.handlers.pop(channel, None)
        return state["got"], state["end"] or clock(), hist

    async def _paced(self, schedule: Schedule, size: int, channel: str) -> int:
        publish, flush, subject = self.nc.publish, self.nc.flush, self.topics[channel]
        late, index, clock = 0, 0, time.monotonic_ns
        while index < schedule.count:
            now = clock()
            n = schedule.overdue(index, now)
            if n == 0:
                await asyncio.sleep((schedule.due(index) - now) / 1e9)  # sync-ok: next due time
                continue
            for i in range(index, index + n):
                due = schedule.due(i)
                await publish(subject, stamped_payload(due, i, size))
                if clock() - due > 1_000_000:
                    late += 1
            index += n
        await flush()
        return late

    def paced(self, schedule: Schedule, size: int, channel: str = "data") -> int:
        return self._run(self._paced(schedule, size, channel))

    def echo(self, idle: float) -> int:
        state = {"n": 0, "stop": False}
        publish, subject = self.nc.publish, self.topics["pong"]
        pending: list[Any] = []

        def on_ping(data: bytes) -> None:
            if not data:
                state["stop"] = True
                return
            state["n"] += 1
            # nats-py's flusher task writes what publish buffered at once: no PING round trip.
            pending.append(asyncio.ensure_future(publish(subject, data)))

        self.handlers["ping"] = on_ping
        self._drain_queue("ping", on_ping)
        self._run(self._until(1, idle, lambda: 1 if state["stop"] else 0))
        return state["n"]

    def ping(self, schedule: Schedule, size: int, idle: float) -> tuple[int, Histogram]:
        hist = Histogram()
        state = {"got": 0}
        clock = time.monotonic_ns

        def on_pong(data: bytes) -> None:
            hist.record(clock() - read_stamp(data)[0])
            state["got"] += 1

        self.handlers["pong"] = on_pong

        async def run() -> None:
            await self._paced(schedule, size, "ping")
            await self._until(schedule.count, idle, lambda: state["got"])

        self._run(run())
        self.handlers.pop("pong", None)
        return state["got"], hist

    def handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send("ping", stamped_payload(0, -1, 16))
            self.flush()
            msg = self.recv(0.05)
            if msg is not None and msg[0] == "pong":
                while self.recv(0.05) is not None:
                    pass
                return
        raise TimeoutError(f"no pong within {timeout:g}s")

    def stop_echo(self) -> None:
        self.send("ping", b"")
        self.flush()

    def close(self) -> None:
        try:
            self._run(self.nc.drain())
        except Exception:
            self._run(self.nc.close())
        self.loop.close()
