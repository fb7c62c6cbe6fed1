"""The asyncio SDK (``sdk.aio``) against a real broker: the sync API's behaviours, awaited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import sdk
import sdk.aio


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_publish_subscribe_round_trip_with_context_managers(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home, name="aio-test") as bus:
            async with bus.subscribe() as sub:
                await bus.publish("channel:message", {"text": "hi"}, session_id="s-1")
                return await sub.recv(timeout=5)

    event = run(main())
    assert (event.type, event.payload, event.version, event.seq, event.session_id, event.source) == (
        "channel:message",
        {"text": "hi"},
        1,
        1,
        "s-1",
        "aio-test",
    )


def test_await_forms_and_versions_increase_by_one(home: Path, broker) -> None:
    async def main():
        bus = await sdk.aio.connect(home, name="aio")
        sub = await bus.subscribe()
        for i in range(50):
            await bus.publish("trace:event", {"name": "step", "attrs": {"i": i}})
        events = [await sub.recv(timeout=5) for _ in range(50)]
        await sub.close()
        await bus.close()
        return events

    events = run(main())
    assert [e.version for e in events] == list(range(1, 51))
    assert [e.payload["attrs"]["i"] for e in events] == list(range(50))


def test_topic_filtering_and_wildcards(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus:
            async with bus.subscribe("agent:*") as agents, bus.subscribe("channel:message") as channel:
                for event_type in ("channel:message", "agent:spawned", "session:created", "agent:completed"):
                    await bus.publish(event_type, {})
                got_agents = [(await agents.recv(timeout=5)).type for _ in range(2)]
                got_channel = (await channel.recv(timeout=5)).type
                with pytest.raises(sdk.BusTimeout):
                    await channel.recv(timeout=0.2)
                return got_agents, got_channel

    assert run(main()) == (["agent:spawned", "agent:completed"], "channel:message")


def test_two_subscribers_both_receive(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus:
            async with bus.subscribe() as a, bus.subscribe() as b:
                await bus.publish("agent:spawned", {"agent_id": "a1"})
                return (await a.recv(timeout=5)).version, (await b.recv(timeout=5)).version

    assert run(main()) == (1, 1)


def test_async_for_ends_when_the_subscription_is_closed(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus:
            sub = await bus.subscribe("agent:*")
            seen = []

            async def consume():
                async for ev in sub:
                    seen.append(ev.version)
                    if len(seen) == 3:
                        await sub.close()  # closing from inside the loop ends it too
                return "ended"

            task = asyncio.create_task(consume())
            for _ in range(3):
                await bus.publish("agent:spawned", {"agent_id": "x"})
            result = await asyncio.wait_for(task, 10)
            return result, seen

    assert run(main()) == ("ended", [1, 2, 3])


def test_close_from_another_task_wakes_a_waiting_receiver(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus:
            sub = await bus.subscribe()
            entered = asyncio.Event()

            async def consume():
                entered.set()
                return [ev async for ev in sub]

            task = asyncio.create_task(consume())
            await entered.wait()
            await asyncio.sleep(0)  # sync-ok: one loop turn so the consumer is parked in recv
            await sub.close()
            events = await asyncio.wait_for(task, 10)
            with pytest.raises(sdk.BusClosed):
                await sub.recv(timeout=0)
            return events

    assert run(main()) == []


def test_recv_timeout_is_a_timeout_error(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus, bus.subscribe("nothing:here") as sub:
            with pytest.raises(TimeoutError) as info:
                await sub.recv(timeout=0.1)
            return info.value

    assert isinstance(run(main()), sdk.BusTimeout)


def test_close_is_idempotent_and_bus_close_closes_subscriptions(home: Path, broker) -> None:
    async def main():
        bus = await sdk.aio.connect(home)
        sub = await bus.subscribe()
        await sub.close()
        await sub.close()
        other = await bus.subscribe("agent:*")
        await bus.close()
        await bus.close()
        assert other.closed and bus.closed
        with pytest.raises(sdk.BusClosed):
            await other.recv(timeout=1)
        with pytest.raises(sdk.BusClosed):
            await bus.publish("agent:spawned", {})
        with pytest.raises(sdk.BusClosed):
            await bus.subscribe()
        return True

    assert run(main())


def test_invalid_input_raises_clear_errors(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home, validate=True) as bus:
            with pytest.raises(sdk.InvalidEvent, match="invalid event type"):
                await bus.publish("not a type", {})
            with pytest.raises(sdk.InvalidEvent, match="invalid pattern"):
                bus.subscribe("agent:**:x")  # refused at once, before anything is awaited
            with pytest.raises(sdk.InvalidEvent, match="policy must be one of"):
                bus.subscribe(policy="never")
            with pytest.raises(sdk.InvalidEvent, match="missing field 'text'"):
                await bus.publish("channel:message", {})
            with pytest.raises(sdk.InvalidEvent, match="session_id"):
                await bus.publish("agent:spawned", {"agent_id": "a"}, session_id=5)
            with pytest.raises(sdk.MessageTooLarge) as info:
                await bus.publish("blob:big", b"x" * (bus.max_event_size + 1))
            # nothing oversized reached the broker, and the bus still works
            async with bus.subscribe() as sub:
                await bus.publish("agent:spawned", {"agent_id": "a"})
                return info.value, await sub.recv(timeout=5)

    error, event = run(main())
    assert error.limit == 1024 * 1024 and error.size > error.limit
    assert event.version == 1


def test_connect_without_a_broker_is_bus_unavailable(home: Path) -> None:
    async def main():
        with pytest.raises(sdk.BusUnavailable, match="did not answer"):
            await sdk.aio.connect(home, timeout=0.3)
        return True

    assert run(main())


def test_slow_subscriber_is_dropped_with_the_lost_count(start, home: Path) -> None:
    start("broker", "--sub-hwm", "10")
    n = 3000
    payload = {"blob": "x" * 2000}  # ~6 MB in all: far past the HWMs and the kernel buffers

    async def main():
        async with sdk.aio.connect(home) as bus:
            dropping = await bus.subscribe("load:x", hwm=10)
            counting = await bus.subscribe("load:x", hwm=10, policy="count")
            marks = await bus.subscribe("mark:done")  # filtered at the broker: never behind
            for _ in range(n):
                await bus.publish("load:x", payload)
            await bus.publish("mark:done")
            await marks.recv(timeout=30)  # the broker has stamped (and kept or dropped) all n
            received = []
            with pytest.raises(sdk.SlowSubscriberError) as info:
                for _ in range(n + 100):
                    try:
                        received.append((await dropping.recv(timeout=2)).seq)
                    except sdk.BusTimeout:
                        # Drained, and its loss came at the very end of the burst: only a later
                        # event shows the gap.
                        await bus.publish("load:x", {"after": True})
            with pytest.raises(sdk.SlowSubscriberError):
                await dropping.recv(timeout=5)  # the subscription is over
            # The counting one keeps going. Drain what it holds, then publish one more event until
            # one gets through (once, unless the machine is starved): its sequence closes the books.
            count = 0
            with pytest.raises(sdk.BusTimeout):
                while True:
                    await counting.recv(timeout=0.5)
                    count += 1
            for attempt in range(10):
                await bus.publish("load:x", {"final": attempt})
                try:
                    while True:
                        last = await counting.recv(timeout=2)
                        count += 1
                        if last.payload == {"final": attempt}:
                            return info.value, received, count, counting.lost, last.seq
                except sdk.BusTimeout:
                    continue
            raise AssertionError(f"no final event got through; received {count}, lost {counting.lost}")

    error, received, count, lost, last_seq = run(main())
    assert received == list(range(1, len(received) + 1))
    assert error.lost >= 1 and error.topic == "load:x"
    assert last_seq > n and lost >= 1
    assert count + lost == last_seq  # every sequence number was either received or counted lost


def test_a_broker_restart_is_counted_in_restarts(start, home: Path) -> None:
    """``sub.restarts``, as on a sync subscription (the README names it for both)."""
    broker = start("broker")

    async def main():
        async with sdk.aio.connect(home, name="aio") as bus:
            async with bus.subscribe("t:*", policy="count") as sub:
                for i in range(50):
                    await bus.publish("t:x", i)
                assert [(await sub.recv(timeout=5)).seq for _ in range(50)] == list(range(1, 51))
                assert sub.restarts == 0
                broker.stop()
                start("broker")
                for attempt in range(40):  # until the subscription is back at the new broker
                    await bus.publish("t:x", "after")
                    try:
                        event = await sub.recv(timeout=0.5)
                        break
                    except sdk.BusTimeout:
                        continue
                else:
                    raise AssertionError("no event from the restarted broker after 40 publishes")
                return event.seq, sub.restarts

    seq, restarts = run(main())
    assert seq < 50 and restarts == 1  # the sequence went backwards: a new broker


def test_stats_answer(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus:
            async with bus.subscribe() as sub:
                await bus.publish("agent:spawned", {"agent_id": "a"})
                await sub.recv(timeout=5)
            return await bus.stats()

    stats = run(main())
    assert isinstance(stats, dict) and stats


def test_concurrent_publishing_tasks_each_keep_their_order(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus, bus.subscribe("load:*") as sub:

            async def publisher(k: int) -> None:
                for i in range(100):
                    await bus.publish(f"load:t{k}", {"i": i})

            await asyncio.gather(*(publisher(k) for k in range(5)))
            return [await sub.recv(timeout=5) for _ in range(500)]

    events = run(main())
    assert [e.version for e in events] == list(range(1, 501))
    for k in range(5):
        mine = [e for e in events if e.type == f"load:t{k}"]
        assert [e.payload["i"] for e in mine] == list(range(100))
        assert [e.seq for e in mine] == list(range(1, 101))
