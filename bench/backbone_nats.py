"""nats-py's side of ``pryxbus bench --scenario backbone`` (bench/backbone.py), on the same local
cluster as the edges: its async publish (alone, and given the edges' work), ordered-consumer
replay, ``js.publish`` round trips and failover stall, ``kv.create``/``kv.get``; and the helpers
both sides share (CPU time of processes, the stream's leader, killing and restarting a node)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.sides import Side

WINDOW = 4000
"""nats-py's async publishes in flight."""
PAYLOAD = 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> float:
    """CPU seconds used so far by the processes ``pids`` (one that is gone counts 0)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            pass
    return total


async def nats_kv(servers: list[str], bucket: str, replicas: int, ops: int) -> dict[str, float]:
    """nats-py's ``kv.create`` (create-if-absent, as a session create) and ``kv.get`` per second."""
    import uuid

    import nats
    from nats.js.api import KeyValueConfig, StorageType

    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=30)
        kv = await js.create_key_value(KeyValueConfig(bucket=bucket, replicas=replicas, storage=StorageType.FILE))
        value = b"x" * 120
        await kv.create("warm-up", value)
        keys = [uuid.uuid4().hex for _ in range(ops)]
        start = time.perf_counter()
        for key in keys:
            await kv.create(key, value)
        create = ops / (time.perf_counter() - start)
        start = time.perf_counter()
        for key in keys:
            await kv.get(key)
        get = ops / (time.perf_counter() - start)
        return {"create": create, "get": get}
    finally:
        await nc.close()


async def stream_leader(servers: list[str], stream: str) -> str:
    import nats

    nc = await nats.connect(servers)
    try:
        return (await nc.jetstream(timeout=10).stream_info(stream)).cluster.leader
    finally:
        await nc.close()


def kill_leader(cluster: Any, stream: str) -> tuple[Any, float]:
    """kill -9 the stream's leader; (its node, the time of the kill)."""
    name = asyncio.run(stream_leader(cluster.urls, stream))
    node = next(m for m in cluster.members if m.name == name)
    killed_at = time.perf_counter()
    cluster.kill(node)
    return node, killed_at


def restart_node(cluster: Any, node: Any) -> None:
    cluster.start_node(node)
    cluster.wait_ready(60)


async def _nats_publish_until_stored(servers: list[str], stream: str, rounds: int, kill: Any) -> float:
    import nats

    async def expected(error: Exception) -> None:  # the killed node's connection ends: what the stall measures
        return None

    nc = await nats.connect(servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=expected)
    try:
        js = nc.jetstream(timeout=5)
        for _ in range(rounds):
            await js.publish(f"nb.{stream}", b"x" * (PAYLOAD + 30))
        killed_at = await asyncio.get_running_loop().run_in_executor(None, kill)
        delay = 0.05
        while True:
            try:
                await js.publish(f"nb.{stream}", b"x" * (PAYLOAD + 30), headers={"Nats-Msg-Id": "after-the-kill"})
                return time.perf_counter() - killed_at
            except Exception:  # no responders, a timeout, a reconnect: what an application retries
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
    finally:
        await nc.close()


def nats_failover(cluster: Any, stream: str, rounds: int) -> float:
    """nats-py's stall: from a kill -9 of the stream's leader to the first ``js.publish`` that
    succeeds (retried with the edge's backoff, 50 ms doubling to 2 s)."""
    killed: list[Any] = []

    def kill() -> float:
        node, at = kill_leader(cluster, stream)
        killed.append(node)
        return at

    try:
        return asyncio.run(_nats_publish_until_stored(cluster.urls, stream, rounds, kill))
    finally:
        for node in killed:
            restart_node(cluster, node)


async def nats_publish(servers: list[str], stream: str, replicas: int, n: int, nodes: list[int]) -> dict[str, float]:
    """nats-py's async publish: its rate, and the CPU per event of it and the ``nodes``."""
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=30, publish_async_max_pending=WINDOW)
        await js.add_stream(StreamConfig(name=stream, subjects=[f"nb.{stream}"], num_replicas=replicas))
        payload = b"x" * (PAYLOAD + 30)  # about a pryxbus message's size (topic and envelope)
        cpu = time.process_time() + cpu_of(nodes)
        start = time.perf_counter()
        for _ in range(n):
            await js.publish_async(f"nb.{stream}", payload)
        await asyncio.wait_for(js.publish_async_completed(), 300)
        rate = n / (time.perf_counter() - start)
        return {"rate": rate, "total_cpu_us": (time.process_time() + cpu_of(nodes) - cpu) / n * 1e6}
    finally:
        await nc.close()


async def _read_all(js: Any, stream: str, n: int) -> tuple[Any, asyncio.Future[int]]:
    """An ordered consumer of the whole stream ``nb.STREAM``, and a future done at its ``n``-th
    message (with the time then, ``time.time_ns()``)."""
    from nats.js.api import DeliverPolicy

    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    count = 0

    async def cb(msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n and not done.done():
            done.set_result(time.time_ns())

    sub = await js.subscribe(
        f"nb.{stream}", cb=cb, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
        pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30,
    )
    return sub, done


def _nats_reader(conn: Any, servers: list[str], stream: str, n: int) -> None:
    """An ordered consumer of the whole stream (what each edge runs), in a process of its own."""

    async def read() -> int:
        import nats

        nc = await nats.connect(servers)
        try:
            _, done = await _read_all(nc.jetstream(timeout=30), stream, n)
            conn.send(("ready", None))
            return await asyncio.wait_for(done, 300)
        finally:
            await nc.close()

    conn.send(("result", {"end": asyncio.run(read())}))


async def _add_stream(servers: list[str], stream: str, replicas: int) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(servers)
    try:
        await nc.jetstream(timeout=30).add_stream(StreamConfig(name=stream, subjects=[f"nb.{stream}"], num_replicas=replicas))
    finally:
        await nc.close()


async def _publish_identified(servers: list[str], stream: str, n: int) -> int:
    """nats-py's async publish, each message with a ``Nats-Msg-Id`` (as the edge sends an identified
    event); returns when it started (ns)."""
    import nats

    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=30, publish_async_max_pending=WINDOW)
        payload = b"x" * (PAYLOAD + 30)
        start = time.time_ns()
        for i in range(n):
            await js.publish_async(f"nb.{stream}", payload, headers={"Nats-Msg-Id": f"bench:{i}"})
        await asyncio.wait_for(js.publish_async_completed(), 300)
        return start
    finally:
        await nc.close()


def nats_edges_work(servers: list[str], stream: str, replicas: int, n: int) -> float:
    """nats-py given the edges' work in a 1→1 across two homes: every message with a
    ``Nats-Msg-Id``, and two ordered consumers (one per home) reading the whole stream, each in a
    process of its own; the rate once both have every message."""
    asyncio.run(_add_stream(servers, stream, replicas))
    readers = [Side(f"bench-nats-reader-{i}", _nats_reader, servers, stream, n) for i in range(2)]
    try:
        for reader in readers:
            reader.expect("ready", 60)
        start = asyncio.run(_publish_identified(servers, stream, n))
        end = max(reader.expect("result", 300)["end"] for reader in readers)
    finally:
        for reader in readers:
            reader.stop()
    return n / ((end - start) / 1e9)


async def nats_replay(servers: list[str], stream: str, n: int) -> float:
    import nats

    nc = await nats.connect(servers)
    try:
        start = time.perf_counter()
        sub, done = await _read_all(nc.jetstream(timeout=30), stream, n)
        await asyncio.wait_for(done, 300)
        elapsed = time.perf_counter() - start
        await sub.unsubscribe()
        return n / elapsed
    finally:
        await nc.close()


async def nats_publish_latency(servers: list[str], stream: str, rounds: int) -> list[float]:
    import nats

    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=30)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await js.publish(f"nb.{stream}", b"x" * (PAYLOAD + 30))
            times.append(time.perf_counter() - start)
        return times
    finally:
        await nc.close()
