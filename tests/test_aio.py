"""What only the asyncio SDK (``sdk.aio``) has, against a real broker: ``await`` or ``async with``
(``Pending``), ``async for``, tasks closing or publishing concurrently, errors raised before anything
is awaited. Everything the two fronts share is tested on both with the ``front`` fixture
(tests/fronts.py)."""

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


def test_two_tasks_reading_one_subscription_share_its_events_exactly_once(start) -> None:
    """One task in ``recv``, another in ``recv_many``, on a ``recover`` subscription that overflowed:
    while one fills a gap from the log (awaiting its pages), the other waits its turn."""
    from tests.helpers import wait_for

    n = 5000
    start("broker", "--sub-hwm", "50")
    log = start("event-log")

    def publish_all() -> None:  # a sync bus in a worker thread: the loop stays free
        with sdk.connect(log.home, name="writer") as writer:
            for i in range(n):
                writer.publish("trace:event", {"i": i})
            writer.flush()
            wait_for(writer.log_stats, lambda s: s["last"] == n, what="the log holding every event")

    async def main():
        async with sdk.aio.connect(log.home, name="readers") as bus:
            sub = await bus.subscribe("trace:*", policy="recover", hwm=10)
            await asyncio.to_thread(publish_all)
            got: dict[str, list[sdk.Event]] = {"recv": [], "recv_many": []}
            done = asyncio.Event()

            async def one() -> None:
                while not done.is_set():
                    event = await sub.recv(timeout=10)
                    got["recv"].append(event)
                    if event.version == n:
                        done.set()

            async def many() -> None:
                while not done.is_set():
                    events = await sub.recv_many(64, timeout=10)
                    got["recv_many"] += events
                    if events and events[-1].version == n:
                        done.set()

            tasks = [asyncio.create_task(one()), asyncio.create_task(many())]
            await done.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            recovered = sub.recovered
        return got, recovered

    got, recovered = run(main())
    assert recovered > 0  # the queues really overflowed: gaps were filled from the log
    assert got["recv"] and got["recv_many"]  # both tasks took part
    for events in got.values():  # each task saw its share in version order
        assert [e.version for e in events] == sorted(e.version for e in events)
    assert sorted(e.version for e in got["recv"] + got["recv_many"]) == list(range(1, n + 1))


def test_a_receive_waiting_for_another_tasks_turn_keeps_its_timeout(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home, name="readers") as bus:
            sub = await bus.subscribe("trace:*")
            waiting = asyncio.create_task(sub.recv())  # reads (and waits) first, with no deadline
            while not sub._reading.locked():
                await asyncio.sleep(0)  # sync-ok: one loop turn at a time until the task reads
            with pytest.raises(sdk.BusTimeout):
                await sub.recv(timeout=0.2)
            await bus.publish("trace:event", {"i": 1})
            event = await waiting  # the first reader still gets what comes next
            return event.payload

    assert run(main()) == {"i": 1}


def test_close_wakes_a_receiver_waiting_for_another_tasks_turn(home: Path, broker) -> None:
    async def main():
        async with sdk.aio.connect(home) as bus:
            sub = await bus.subscribe()
            first = asyncio.create_task(sub.recv())
            while not sub._reading.locked():
                await asyncio.sleep(0)  # sync-ok: one loop turn at a time until the first reads
            second = asyncio.create_task(sub.recv())  # waits for the first's turn
            await asyncio.sleep(0)  # sync-ok: one loop turn so the second is parked on the turn
            await sub.close()
            return await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)

    outcomes = run(main())
    assert [type(o) for o in outcomes] == [sdk.BusClosed, sdk.BusClosed]


def test_a_receive_right_after_another_keeps_its_timeout_while_a_waiter_is_woken(home: Path, broker) -> None:
    """Task A reads an event while task B waits its turn with no deadline; A asks again at once,
    with a timeout, in the step its first receive released the turn: the turn is free but promised
    to B (woken, not yet run). A's receive must still give up at its deadline, not wait behind B,
    which reads on with no deadline."""

    async def main():
        async with sdk.aio.connect(home, name="readers") as bus:
            sub = await bus.subscribe("trace:*")

            async def reader() -> str:
                await sub.recv()
                try:  # the same step as the first receive's release: B is woken, not yet run
                    await sub.recv(timeout=0.2)
                except sdk.BusTimeout:
                    return "timed out"
                return "got an event"

            asking = asyncio.create_task(reader())
            while not sub._reading.locked():
                await asyncio.sleep(0)  # sync-ok: one loop turn at a time until A reads
            second = asyncio.create_task(sub.recv())  # B: waits for A's turn, no deadline
            await asyncio.sleep(0)  # sync-ok: one loop turn so B is parked on the turn
            await bus.publish("trace:event", {"i": 1})
            try:
                outcome = await asyncio.wait_for(asyncio.shield(asking), 10)
            except asyncio.TimeoutError:
                outcome = "still waiting after 10 s"
            await sub.close()
            await asyncio.gather(asking, second, return_exceptions=True)
            return outcome

    assert run(main()) == "timed out"
