"""The event log's ``summary``, ``publishers`` and ``import`` on an edge's log endpoint (issue 19),
read from the stream: ``sessions stats``, ``log_summary`` and session export/import on a backbone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import sdk
from tests.helpers import collect, start_part


def _delete_from_stream(servers: str, stream: str, version: int) -> None:
    import nats

    async def run() -> None:
        nc = await nats.connect(servers.split(","), connect_timeout=5)
        try:
            await nc.jetstream(timeout=5).delete_msg(stream, version)
        finally:
            await nc.close()

    asyncio.run(run())


def _summary_of(events: list[sdk.Event], bucket: float) -> dict[str, object]:
    """What the single-host log's SQL gives for these events (broker/eventlog/query.py)."""
    by_type: dict[str, int] = {}
    buckets: dict[tuple[float, str], int] = {}
    for e in events:
        by_type[e.type] = by_type.get(e.type, 0) + 1
        key = (int(e.ts / bucket) * bucket, e.type)
        buckets[key] = buckets.get(key, 0) + 1
    return {
        "events": len(events), "by_type": dict(sorted(by_type.items())),
        "first_ts": min(e.ts for e in events), "last_ts": max(e.ts for e in events),
        "first_version": min(e.version for e in events), "last_version": max(e.version for e in events),
        "imported": 0, "buckets": [[start, t, n] for (start, t), n in sorted(buckets.items())],
    }


def test_summary_publishers_and_import_are_served_from_the_stream(xprocess, cluster, stream, homes) -> None:
    home = homes()
    up = start_part(xprocess, home, "up", "--backbone", cluster.servers, "--stream", stream)
    try:
        with sdk.connect(home, name="a", timeout=10.0) as bus, bus.subscribe() as everything:
            chat = bus.sessions.create("chat", id="s1")
            bus.sessions.create("other", id="s2")
            for i in range(3):
                bus.publish("channel:message", {"i": i}, session_id="s1")
            bus.publish("agent:spawned", {"who": "x"}, session_id="s1")
            bus.publish("channel:message", {"i": 9}, session_id="s2")
            bus.publish("trace:event", {"n": 1})
            bus.publish("trace:event", {"n": 2})
            got = collect(everything, 9, timeout=10)
            mine = [e for e in got if e.session_id == "s1"]

            # summary: a session's (sessions stats) and the bus's, as the single-host log computes it
            stats = bus.sessions.stats("s1")
            assert (stats["events"], stats["messages"]) == (5, 3)
            assert stats["by_type"] == {"agent:spawned": 1, "channel:message": 3, "session:created": 1}
            expected = _summary_of(mine, 60.0)
            summary = bus.log.call({"op": "summary", "session_id": "s1", "bucket": 60})
            assert summary == {**expected, "session_id": "s1", "bucket": 60.0,
                               "duration": expected["last_ts"] - expected["first_ts"]}  # type: ignore[operator]
            whole = bus.log_summary(bucket=3600)
            assert {k: whole[k] for k in ("events", "by_type", "buckets")} == {
                k: _summary_of(got, 3600.0)[k] for k in ("events", "by_type", "buckets")}
            later = sorted(e.ts for e in got)[4]
            assert bus.log_summary(ts_from=later)["events"] == sum(e.ts >= later for e in got)

            # publishers: the identified events' publishers (the session service's are anonymous)
            ours = [e for e in got if e.publisher is not None]
            assert {e.publisher[0] for e in ours} == {bus.publisher_id}  # type: ignore[index]
            row = [bus.publisher_id, max(e.publisher[1] for e in ours), max(e.version for e in ours)]  # type: ignore[index]
            assert bus.log.call({"op": "publishers"}) == {"publishers": [row], "last": max(e.version for e in got)}
            assert bus.log.call({"op": "publishers", "since": row[2]})["publishers"] == []

            # import: an export comes back (the session restored, its events found in the stream)
            path = home / "chat.jsonl"
            assert bus.sessions.export("s1", path) == 5
            bus.sessions.delete("s1")
            with pytest.raises(sdk.SessionNotFound):
                bus.sessions.get("s1")
            assert bus.sessions.import_(path) == chat
            assert bus.sessions.import_(path) == chat  # idempotent
            assert bus.log.call({"op": "import", "session_id": "s1", "events": []}) == {"inserted": 0, "existing": 0}

            lines = path.read_text().splitlines()

            def edited(change) -> Path:
                rows = [json.loads(line) for line in lines]
                change(rows)
                out = home / "edited.jsonl"
                out.write_text("".join(json.dumps(r) + "\n" for r in rows))
                return out

            with pytest.raises(sdk.SessionConflict, match="other events under versions"):
                bus.sessions.import_(edited(lambda rows: rows[2].update(type="channel:edited")))
            with pytest.raises(sdk.SessionConflict, match="above this bus's last version"):
                bus.sessions.import_(edited(lambda rows: rows[2].update(version=10**6)))
            gone = json.loads(lines[-1])["version"]
            _delete_from_stream(cluster.servers, stream, gone)
            with pytest.raises(sdk.SessionConflict, match=rf"no longer holds versions \[{gone}\].*cannot put an event back"):
                bus.sessions.import_(path)
            with pytest.raises(sdk.BusError, match="belongs to session"):
                bus.log.call({"op": "import", "session_id": "s2", "events": [
                    [mine[0].version, 1, mine[0].type, bus.log.call({"op": "replay", "session_id": "s1"})["events"][0][3]]]})
    finally:
        up.stop()
