"""The broker's per-type state is bounded: --max-topics, and stats list only the busiest types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sdk
from broker.bus.config import STATS_TOPICS
from helpers import collect, wait_for


def test_events_of_new_types_beyond_max_topics_are_refused_counted_and_logged(home: Path, start) -> None:
    broker = start("broker", "--max-topics", "3")
    with sdk.connect(home, name="test") as bus, bus.subscribe() as sub:
        for t in ["a:one", "b:two", "c:three", "d:four", "e:five", "a:one", "d:four"]:
            bus.publish(t, {"t": t})
        bus.publish("b:two", {"t": "last"})
        got = collect(sub, 5)
        stats = wait_for(bus.stats, lambda s: s["events_in"] == 5, what="five events stamped")
    assert [(e.type, e.seq) for e in got] == [("a:one", 1), ("b:two", 1), ("c:three", 1), ("a:one", 2), ("b:two", 2)]
    assert [e.version for e in got] == [1, 2, 3, 4, 5]  # refused events take no version
    assert (stats["topics"], stats["topic_count"], stats["topics_refused"]) == (
        {"a:one": 2, "b:two": 2, "c:three": 1},
        3,
        3,
    )
    assert stats["config"]["max_topics"] == 3
    assert (stats["malformed"], stats["rejected"]) == (0, 0)
    warnings = [line for line in broker.log.splitlines() if "refusing events of new types" in line]
    assert len(warnings) == 1 and "'d:four'" in warnings[0] and "--max-topics" in warnings[0]


def test_stats_list_the_busiest_types_and_count_them_all(home: Path, start) -> None:
    start("broker")
    many = STATS_TOPICS + 10
    with sdk.connect(home, name="test") as bus:
        for i in range(many):
            bus.publish(f"cold:{i}", None)
        for _ in range(3):
            bus.publish("hot:one", None)
        stats = wait_for(bus.stats, lambda s: s["events_in"] == many + 3, what="every event stamped")
    assert stats["topic_count"] == many + 1
    assert len(stats["topics"]) == STATS_TOPICS
    assert stats["topics"]["hot:one"] == 3  # the busiest is always listed
    assert set(stats["topics"].values()) == {1, 3}


def test_max_topics_must_be_a_whole_number_of_at_least_one(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "broker", "broker", "--home", str(home), "--max-topics", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--max-topics: must be a whole number from 1 to" in done.stderr


def test_top_gives_no_rate_for_a_type_the_last_truncated_reply_did_not_list() -> None:
    """A type outside the busiest listed is not new: rating it from 0 would show a false burst."""
    from sdk.monitor import Sample, figures

    def reply(version: int, topics: dict[str, int], count: int) -> dict:
        return {"pid": 1, "version": version, "events_in": version, "topics": topics, "topic_count": count}

    truncated = Sample(at=0.0, broker=reply(100, {"a:x": 60}, 50))
    whole = Sample(at=0.0, broker=reply(100, {"a:x": 60, "b:y": 40}, 2))
    later = Sample(at=1.0, broker=reply(150, {"a:x": 70, "c:z": 40}, 50))
    assert figures(later, truncated)["broker"]["topic_rates"] == {"a:x": 10.0, "c:z": None}
    assert figures(later, whole)["broker"]["topic_rates"] == {"a:x": 10.0, "c:z": 40.0}  # new since
