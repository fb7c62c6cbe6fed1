"""Sessions with their logged events (issue 4): resume, export -> delete -> import, stats, CLI.

The SDK tests run on both fronts (``front``: sync and asyncio, tests/fronts.py).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

import sdk
from tests.helpers import REPO
from tests.fronts import Front
from tests.helpers import wait_for


def _stack(start) -> None:
    start("broker")
    start("event-log")
    start("session-service")


@pytest.fixture
def full(home: Path, start, front: Front) -> sdk.Bus:
    """A stack with the event log, and a bus on it (sync, or asyncio behind a blocking facade)."""
    _stack(start)
    with front.connect(home, name="test") as bus:
        yield bus


@pytest.fixture
def full_sync(home: Path, start) -> sdk.Bus:
    _stack(start)
    with sdk.connect(home, name="test") as bus:
        yield bus


TOTAL = 11
"""Events one conversation() puts on the bus (its own 10 and the session service's session:created)."""


def conversation(bus: sdk.Bus, title: str = "Chat with User") -> sdk.Session:
    """A session with 3 messages, 2 replies, an agent run, and unrelated traffic, all logged."""
    session = bus.sessions.create(title)
    sid = session.id
    logged_through(bus, 1)  # session:created (published by the session service) comes first
    for i in range(3):
        bus.publish("channel:message", {"text": f"hi {i}", "raw": b"\x00\x01"}, session_id=sid)
        bus.publish("trace:event", {"noise": i})  # no session
        bus.publish("channel:outbound_message", {"text": f"reply {i}"}, session_id=sid if i < 2 else "other")
    bus.publish("agent:spawned", {"agent": "a"}, session_id=sid)
    logged_through(bus, TOTAL)
    return session


def logged_through(bus: sdk.Bus, version: int) -> None:
    wait_for(bus.log_stats, lambda s: s["last"] >= version, what=f"log at {version}")


def session_event_types(bus: sdk.Bus, sid: str) -> list[str]:
    return [e.type for e in bus.replay(session_id=sid)]


def test_resume_returns_the_session_and_its_events(full: sdk.Bus) -> None:
    session = conversation(full)
    history = full.sessions.resume(session.id)
    assert history.session == session
    assert [e.type for e in history.events] == [
        "session:created",
        "channel:message",
        "channel:outbound_message",
        "channel:message",
        "channel:outbound_message",
        "channel:message",
        "agent:spawned",
    ]
    assert history.events[1].payload == {"text": "hi 0", "raw": b"\x00\x01"}
    assert {e.session_id for e in history.events} == {session.id}
    assert history.version == full.log_stats()["last"]
    with full.subscribe("channel:*", since=history.version) as sub:  # carry on from there
        full.publish("channel:message", {"text": "back"}, session_id=session.id)
        assert sub.recv(timeout=5).payload == {"text": "back"}
    with pytest.raises(sdk.SessionNotFound):
        full.sessions.resume("no-such-session")


def test_export_delete_import_round_trip(full: sdk.Bus, home: Path) -> None:
    session = conversation(full)
    before = full.sessions.resume(session.id)
    path = home / "chat.jsonl"
    assert full.sessions.export(session.id, path) == len(before.events) == 7

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"pryxbus": "session-export", "format": 1, "session": session.to_dict(), "events": 7}
    assert [line["version"] for line in lines[1:]] == [e.version for e in before.events]
    assert lines[2]["payload"]["text"] == "hi 0"

    full.sessions.delete(session.id)
    logged_through(full, TOTAL + 1)  # session:deleted, which goes with the rest
    full.log.call({"op": "delete_session", "session_id": session.id})
    with pytest.raises(sdk.SessionNotFound):
        full.sessions.get(session.id)
    assert list(full.replay(session_id=session.id)) == []

    assert full.sessions.import_(path) == session
    after = full.sessions.resume(session.id)
    assert after.session == before.session
    assert after.events == before.events

    # idempotent: a second import changes nothing
    assert full.sessions.import_(path) == session
    assert full.sessions.resume(session.id).events == before.events


def test_import_refuses_a_conflicting_session_unless_overwrite(full: sdk.Bus, home: Path) -> None:
    session = conversation(full)
    path = home / "chat.jsonl"
    full.sessions.export(session.id, path)
    renamed = full.sessions.rename(session.id, "Another title")
    with pytest.raises(sdk.SessionConflict):
        full.sessions.import_(path)
    assert full.sessions.get(session.id) == renamed
    assert full.sessions.import_(path, overwrite=True) == session
    assert full.sessions.get(session.id) == session

    bad = home / "bad.jsonl"
    bad.write_text('{"not": "an export"}\n')
    with pytest.raises(sdk.InvalidEvent):
        full.sessions.import_(bad)


def test_import_refuses_other_events_under_the_same_versions(full: sdk.Bus, home: Path) -> None:
    session = conversation(full)
    path = home / "chat.jsonl"
    full.sessions.export(session.id, path)
    lines = path.read_text().splitlines()
    event = json.loads(lines[2])
    event["type"] = "channel:edited"
    path.write_text("\n".join([lines[0], lines[1], json.dumps(event), *lines[3:]]) + "\n")
    with pytest.raises(sdk.SessionConflict):
        full.sessions.import_(path)


def test_stats_count_what_was_published(full: sdk.Bus) -> None:
    session = conversation(full)
    stats = full.sessions.stats(session.id)
    assert stats["events"] == 7
    assert stats["by_type"] == {
        "agent:spawned": 1,
        "channel:message": 3,
        "channel:outbound_message": 2,
        "session:created": 1,
    }
    assert stats["messages"] == 5
    events = list(full.replay(session_id=session.id))
    assert stats["first_version"] == events[0].version and stats["last_version"] == events[-1].version
    assert stats["duration"] >= 0 and stats["first_activity"] <= stats["last_activity"]

    whole = full.log_summary(bucket=3600)
    assert whole["events"] == TOTAL
    assert whole["by_type"]["trace:event"] == 3
    assert whole["by_type"]["channel:outbound_message"] == 3
    assert sum(n for _, _, n in whole["buckets"]) == whole["events"]


def test_cli_export_import_stats(full_sync: sdk.Bus, home: Path) -> None:
    full = full_sync
    session = conversation(full)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", "sessions", *args, "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )

    path = home / "cli.jsonl"
    out = cli("export", session.id, str(path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"id": session.id, "path": str(path), "events": 7}
    full.sessions.delete(session.id)
    logged_through(full, TOTAL + 1)  # session:deleted
    out = cli("import", str(path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == session.to_dict()
    out = cli("stats", session.id)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["messages"] == 5
    out = cli("stats", "--bucket", "60")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"]["events"] == TOTAL + 1  # and session:deleted
    out = cli("stats", "nope", "--json")  # --json is accepted (these always print JSON), errors too
    assert out.returncode == 1 and "not_found" in out.stderr
    assert json.loads(out.stdout)["code"] == "not_found"
    for bad, why in ((home / "no" / "such" / "dir.jsonl", "No such file or directory"), (home, "Is a directory")):
        out = cli("export", session.id, str(bad))
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        # the path given, not the temporary file beside it ("HOME.tmp: Is a directory" said it was one)
        assert json.loads(out.stdout) == {"ok": False, "code": "file", "message": f"cannot write {bad}: {why}"}
    assert not (home.parent / f"{home.name}.tmp").exists()  # nothing half-written left behind


def edited_export(full: sdk.Bus, session: sdk.Session, path: Path, change: Callable[[list[dict]], None]) -> None:
    """Export ``session`` to ``path``, then let ``change`` edit its lines (header first)."""
    full.sessions.export(session.id, path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    change(lines)
    lines[0]["events"] = len(lines) - 1
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_refused_import_changes_nothing(full: sdk.Bus, home: Path) -> None:
    """Issue 16: an import the log refuses used to leave the restored session behind."""
    session = conversation(full)
    path = home / "chat.jsonl"
    edited_export(full, session, path, lambda lines: lines[2].update(type="channel:edited"))
    full.sessions.delete(session.id)
    count = len(full.sessions.list())
    with pytest.raises(sdk.SessionConflict, match="other events under versions"):
        full.sessions.import_(path)
    with pytest.raises(sdk.SessionNotFound):
        full.sessions.get(session.id)
    assert len(full.sessions.list()) == count


def test_an_import_cannot_forge_history(full: sdk.Bus, home: Path) -> None:
    """Issue 16: an export file is anyone's to write. Its events must belong to its session, may
    only fill versions the log held for that session, and stay marked as imported."""
    from schemas.envelope import encode_body

    victim = conversation(full)
    carrier = full.sessions.create("carrier")
    full.publish("channel:message", {"text": "mine"}, session_id=carrier.id)
    logged_through(full, TOTAL + 2)
    free = full.log.call({"op": "replay", "session_id": carrier.id})["events"][-1][0]
    kept = home / "carrier.jsonl"
    full.sessions.export(carrier.id, kept)
    full.log.call({"op": "delete_session", "session_id": carrier.id})  # `free` is now vacated (by carrier)

    def forged(session_id: str) -> Callable[[list[dict]], None]:
        body = encode_body({"text": "forged"}, source="admin", session_id=session_id)
        line = {"version": free, "seq": 1, "type": "channel:message", "body": base64.b64encode(body).decode()}
        return lambda lines: lines.append(line)

    path = home / "forged.jsonl"
    edited_export(full, carrier, path, forged(victim.id))  # a carrier file with a victim's event
    with pytest.raises(sdk.BusError, match="belongs to session"):
        full.sessions.import_(path)
    edited_export(full, victim, path, forged(victim.id))  # the victim's own file, at carrier's version
    with pytest.raises(sdk.SessionConflict, match="never held versions"):
        full.sessions.import_(path)
    assert "forged" not in str([e.payload for e in full.replay(session_id=victim.id)])

    # what an import does put back is distinguishable from what the bus delivered live
    before = full.log.call({"op": "replay", "session_id": carrier.id})
    assert before["events"] == [] and before["imported"] == []
    full.sessions.import_(kept)
    page = full.log.call({"op": "replay", "session_id": carrier.id})
    assert page["imported"] == [row[0] for row in page["events"]] and free in page["imported"]
    assert full.log.call({"op": "summary", "session_id": carrier.id})["imported"] == len(page["events"])
    assert full.log.call({"op": "summary", "session_id": victim.id})["imported"] == 0


def test_import_reads_hostile_files_within_bounds(full_sync: sdk.Bus, home: Path) -> None:
    """Issue 16: a 100k-deep header was a RecursionError traceback; a 200 MB line grew the client by
    195 MB before 'event log did not answer'. The file is streamed, its lines and size are bounded,
    and each refusal is a clear error (exit 1) that changes nothing."""
    from sdk.export_file import MAX_FILE, MAX_LINE

    header = {"pryxbus": "session-export", "format": 1, "events": 1, "session": {
        "id": "hostile", "title": "t", "created_at": "2024-01-01T00:00:00.000000Z", "updated_at": "2024-01-01T00:00:00.000000Z"}}
    deep, long, huge = home / "deep.jsonl", home / "long.jsonl", home / "huge.jsonl"
    deep.write_text('{"pryxbus": "session-export", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with long.open("w") as f:
        f.write(json.dumps(header) + "\n" + '{"body": "' + "A" * MAX_LINE + '"}\n')
    with huge.open("w") as f:  # sparse: the size is refused before anything is read
        f.write(json.dumps(header) + "\n")
        f.truncate(MAX_FILE + 1)
    for path, why in ((deep, "line 1 nests too deep to parse"), (long, f"line 2 of session export {str(long)!r} is longer than 64 MiB"),
                      (huge, "is larger than 16 GiB")):
        out = subprocess.run([sys.executable, "-m", "broker", "sessions", "import", str(path), "--home", str(home)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 1 and why in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert json.loads(out.stdout)["code"] == "invalid"
    with pytest.raises(sdk.SessionNotFound):
        full_sync.sessions.get("hostile")
