"""The session service through real processes: seed semantics, faults, garbage, events (issue 3)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

import sdk
from broker.sessions.service import BATCH
from schemas.endpoints import Endpoints
from schemas.sessions import MAX_TITLE_LENGTH
from sdk.sessions import SessionClient
from tests.fronts import Front, sync_only
from tests.helpers import ENV, Part, cli, pryxbus, raw_request, wait_for

HOSTILE_TITLES = [
    "'); DROP TABLE sessions;--",
    'Robert"); DELETE FROM sessions WHERE ("1"="1',
    "日本語のタイトル 🎉 עברית \u202e reversed",
    "nul\x00in the middle\x00",
    "",
    "tab\tnew\nline\r\\backslash %s %d {0}",
    "x" * MAX_TITLE_LENGTH,
]


@pytest.fixture
def client(home: Path, session_service: Part, front: Front):
    """A standalone session client on each front (sync, asyncio behind a blocking facade)."""
    with front.open_sessions(home, timeout=5.0) as c:
        yield c


# -- seed semantics ------------------------------------------------------------------------------


def test_create_get_round_trip(client: SessionClient) -> None:
    s = client.create("Chat with User")
    assert s.title == "Chat with User"
    assert s.created_at == s.updated_at
    assert s.created_at.utcoffset().total_seconds() == 0
    assert client.get(s.id) == s


def test_list_is_newest_first_and_capped_at_100(client: SessionClient) -> None:
    ids = [client.create(f"s{i}").id for i in range(105)]
    listed = client.list(limit=1000)
    assert [s.id for s in listed] == ids[::-1][:100]
    assert [s.id for s in client.list()] == ids[::-1][:100]
    assert [s.id for s in client.list(5, offset=100)] == ids[::-1][100:]
    assert [s.id for s in client.iterate(page_size=40)] == ids[::-1]
    client.touch(ids[0])
    assert client.list(1)[0].id == ids[0]


def test_ensure_creates_once_and_never_retitles(client: SessionClient) -> None:
    first = client.ensure("s-1", "Chat with User")
    second = client.ensure("s-1", "Another title")
    assert (second.id, second.title, second.created_at) == ("s-1", "Chat with User", first.created_at)
    assert second.updated_at > first.updated_at
    assert [s.id for s in client.list()] == ["s-1"]


def test_rename_touch_delete(client: SessionClient) -> None:
    s = client.create("before")
    renamed = client.rename(s.id, "after")
    assert (renamed.title, renamed.created_at) == ("after", s.created_at)
    touched = client.touch(s.id)
    assert touched.updated_at > renamed.updated_at
    assert client.delete(s.id) == touched
    assert client.list() == []


def test_a_get_after_any_change_sees_the_change(client: SessionClient) -> None:
    """The service remembers replies to gets; every write forgets them."""
    with pytest.raises(sdk.SessionNotFound):
        client.get("later")
    s = client.create("first", id="later")
    assert client.get("later") == client.get("later") == s
    for change in (
        lambda: client.rename("later", "second"),
        lambda: client.touch("later"),
        lambda: client.ensure("later", "ignored"),
    ):
        changed = change()
        assert client.get("later") == changed
    assert changed.title == "second" and changed.updated_at > s.updated_at
    client.create("another")  # a write to another session forgets this one's reply too
    assert client.get("later").title == "second"
    client.delete("later")
    with pytest.raises(sdk.SessionNotFound):
        client.get("later")


def test_one_database_has_one_service(home: Path, session_service: Part, tmp_path: Path) -> None:
    """A second service on the same file (from another home) is refused: the first caches gets."""
    other = tmp_path / "other-home"
    other.mkdir()
    db = home / "sessions.db"
    done = pryxbus("session-service", "--db", str(db), home=other)
    assert done.returncode == 1
    assert f"another session service is using {db} (pid {session_service.pid})" in done.stderr
    missing = pryxbus("session-service", "--db", str(tmp_path / "nowhere" / "s.db"), home=home)
    assert (missing.returncode, missing.stderr.strip()) == (
        1, f"pryxbus: --db: the directory {tmp_path / 'nowhere'} does not exist"
    )


def test_unknown_ids_are_not_found(client: SessionClient) -> None:
    for call in (
        lambda: client.get("nope"),
        lambda: client.rename("nope", "t"),
        lambda: client.touch("nope"),
        lambda: client.delete("nope"),
    ):
        with pytest.raises(sdk.SessionNotFound) as e:
            call()
        assert e.value.code == "not_found"
    assert client.list() == []


def test_create_with_a_taken_id_and_another_title_conflicts(client: SessionClient) -> None:
    s = client.create("mine", id="fixed")
    assert client.create("mine", id="fixed") == s  # what a retry sees
    with pytest.raises(sdk.SessionConflict):
        client.create("theirs", id="fixed")


@sync_only
@pytest.mark.parametrize("title", HOSTILE_TITLES, ids=range(len(HOSTILE_TITLES)))
def test_hostile_titles_round_trip(client: SessionClient, home: Path, title: str) -> None:
    s = client.create(title)
    assert client.get(s.id).title == title
    other = "!" + title[1:]
    assert client.rename(s.id, other).title == other
    db = sqlite3.connect(home / "sessions.db")
    assert db.execute("SELECT title FROM sessions WHERE id = ?", (s.id,)).fetchone()[0] == other
    assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1
    db.close()


@sync_only
def test_over_long_title_is_refused_by_client_and_service(client: SessionClient, home: Path) -> None:
    with pytest.raises(sdk.SessionError) as e:
        client.create("x" * (MAX_TITLE_LENGTH + 1))
    assert e.value.code == "too_long"
    reply = raw_request(home, msgpack.packb({"op": "create", "title": "x" * (MAX_TITLE_LENGTH + 1)}))
    assert (reply["ok"], reply["code"]) == (False, "too_long")


# -- garbage -------------------------------------------------------------------------------------


GARBAGE = [
    (os.urandom(64), "bad_request"),
    (b"", "bad_request"),
    (b"\xc1", "bad_request"),  # a byte msgpack never uses
    (b"\x92\x01", "bad_request"),  # truncated array
    (msgpack.packb({"op": "get", "id": "a"}) + b"trailing", "bad_request"),
    (msgpack.packb([1, 2, 3]), "bad_request"),
    (msgpack.packb("get"), "bad_request"),
    (msgpack.packb({}), "bad_request"),
    (msgpack.packb({"op": 7}), "bad_request"),
    (msgpack.packb({"op": "explode"}), "unknown_op"),
    (msgpack.packb({"op": "get"}), "bad_request"),
    (msgpack.packb({"op": "get", "id": 12}), "bad_request"),
    (msgpack.packb({"op": "get", "id": ""}), "bad_request"),
    (msgpack.packb({"op": "get", "id": "x" * 10_000}), "too_long"),
    (msgpack.packb({"op": "create"}), "bad_request"),
    (msgpack.packb({"op": "create", "title": None}), "bad_request"),
    (msgpack.packb({"op": "create", "title": b"bytes"}), "bad_request"),
    (msgpack.packb({"op": "create", "title": ["list"]}), "bad_request"),
    (msgpack.packb({"op": "ensure", "id": "e"}), "bad_request"),
    (msgpack.packb({"op": "rename", "id": "e", "title": {"a": 1}}), "bad_request"),
    (msgpack.packb({"op": "create", "title": "t", "rid": 5}), "bad_request"),
    (msgpack.packb({"op": "list", "limit": "ten"}), "bad_request"),
    (msgpack.packb({"op": "list", "limit": 0}), "bad_request"),
    (msgpack.packb({"op": "list", "limit": True}), "bad_request"),
    (msgpack.packb({"op": "list", "offset": -1}), "bad_request"),
    (msgpack.packb({"op": "list", "cursor": "!!not-a-cursor"}), "bad_request"),
    (msgpack.packb({"op": "list", "cursor": 3}), "bad_request"),
    (msgpack.packb({"op": "list", "cursor": "kQ", "offset": 2}), "bad_request"),
    (b"\x91" * 5000 + b"\xc0", "bad_request"),  # deeply nested
    (b"\xdb\xff\xff\xff\xff" + b"x" * 10, "bad_request"),  # a str longer than the frame
]


@sync_only
def test_garbage_requests_all_get_structured_errors(client: SessionClient, home: Path) -> None:
    for body, code in GARBAGE:
        reply = raw_request(home, body)
        assert reply["ok"] is False, body[:40]
        assert reply["code"] == code, (body[:40], reply)
        assert isinstance(reply["message"], str) and reply["message"]
    stats = client.stats()
    assert sum(stats["errors"].values()) == len(GARBAGE)
    assert client.create("still fine").title == "still fine"
    assert [s.title for s in client.list()] == ["still fine"]


@sync_only
def test_odd_framing_is_answered_and_does_not_desync(client: SessionClient, home: Path) -> None:
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(Endpoints.for_home(home).sessions)
    try:
        ping = msgpack.packb({"op": "ping"})
        cases = [
            ([b"", ping, ping], [b""]),  # two request frames after the delimiter
            ([ping], []),  # no delimiter at all (raw DEALER)
            ([b"", b"not msgpack"], [b""]),
        ]
        for frames, head in cases:
            dealer.send_multipart(frames)
            assert dealer.poll(5000, zmq.POLLIN)
            reply = dealer.recv_multipart()
            assert reply[:-1] == head
            decoded = msgpack.unpackb(reply[-1], raw=False)
            if frames == [ping]:
                assert decoded["ok"] is True
            else:
                assert (decoded["ok"], decoded["code"]) == (False, "bad_request")
    finally:
        dealer.close()
    assert client.ping()["status"] == "ok"


# -- concurrency and durability ------------------------------------------------------------------

ENSURER = """
import json, sys
from sdk.sessions import SessionClient
home, sid, title = sys.argv[1:4]
with SessionClient.open(home, timeout=10) as c:
    c.ping()
    print("connected", flush=True)
    sys.stdin.readline()
    print(json.dumps(c.ensure(sid, title).to_dict()), flush=True)
"""


@sync_only
def test_concurrent_ensure_from_processes_makes_one_row(client: SessionClient, home: Path) -> None:
    env = ENV
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENSURER, str(home), "shared-id", f"title {i}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        for i in range(6)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "connected"
        for p in procs:  # release them together
            p.stdin.write("go\n")
            p.stdin.flush()
        answers = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    assert {(a["id"], a["title"], a["created_at"]) for a in answers} == {
        ("shared-id", answers[0]["title"], answers[0]["created_at"])
    }
    assert answers[0]["title"] in {f"title {i}" for i in range(6)}
    assert len({a["updated_at"] for a in answers}) == 6  # every ensure touched it
    assert [s.id for s in client.list()] == ["shared-id"]
    assert client.stats()["errors"] == {}


def test_kill_9_under_write_load_loses_no_acknowledged_session(start, home: Path) -> None:
    service = start("session-service")
    acked: list[list[str]] = [[] for _ in range(3)]
    unanswered = [0] * 3  # creates that got no reply: each may or may not have been committed
    enough, killed = threading.Event(), threading.Event()

    def writer(n: int) -> None:
        with SessionClient.open(home, timeout=1.0, retries=0) as c:
            while True:
                try:
                    s = c.create(f"load {n}")
                except sdk.BusUnavailable:
                    unanswered[n] += 1
                    if killed.is_set():
                        return
                    continue  # a service stalled for a second on a loaded machine, not yet killed
                acked[n].append(s.id)
                if sum(map(len, acked)) >= 300:
                    enough.set()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    assert enough.wait(30), f"only {sum(map(len, acked))} creates acknowledged"
    killed.set()  # from here, a create without a reply is the kill's: its writer stops
    service.kill()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    db = sqlite3.connect(home / "sessions.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in db.execute("SELECT id FROM sessions")}
    db.close()
    all_acked = {sid for ids in acked for sid in ids}
    assert len(all_acked) == sum(map(len, acked))
    assert all_acked - stored == set()
    # at most the creates that got no reply: the one in flight per writer at the kill (and any that
    # a stall before it left unanswered)
    assert len(stored - all_acked) <= sum(unanswered)
    start("session-service")
    with SessionClient.open(home) as c:
        assert {s.id for s in c.iterate()} == stored


# -- Lazy Pirate ---------------------------------------------------------------------------------


def test_no_service_raises_bus_unavailable_in_bounded_time(home: Path, front: Front) -> None:
    with front.open_sessions(home, timeout=0.2, retries=2) as c:
        began = time.monotonic()
        with pytest.raises(sdk.BusUnavailable):
            c.create("nobody listens")
        assert time.monotonic() - began < 5


def _in_thread(call):
    result: dict = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as e:  # handed to the test thread
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_stalled_service_is_retried_and_the_change_made_once(
    client: SessionClient, home: Path, session_service: Part, front: Front
) -> None:
    victim = client.create("to delete")
    session_service.signal(signal.SIGSTOP)
    try:
        with front.open_sessions(home, timeout=0.3, retries=20) as retrying:
            t1, created = _in_thread(lambda: retrying.create("made while stalled"))
            time.sleep(1.0)  # sync-ok: let several attempts time out and be retried while stopped
            session_service.signal(signal.SIGCONT)
            t1.join(10)
            session_service.signal(signal.SIGSTOP)
            t2, deleted = _in_thread(lambda: retrying.delete(victim.id))
            time.sleep(1.0)  # sync-ok: as above, for a delete (a replay must not say not_found)
            session_service.signal(signal.SIGCONT)
            t2.join(10)
    finally:
        session_service.signal(signal.SIGCONT)
    assert "error" not in created and "error" not in deleted, (created, deleted)
    assert deleted["value"].id == victim.id
    titles = [s.title for s in client.list()]
    assert titles == ["made while stalled"]
    assert client.stats()["requests"].get("replayed", 0) >= 1


def test_service_killed_between_request_and_reply(start, home: Path) -> None:
    service = start("session-service")
    service.signal(signal.SIGSTOP)  # it receives the request but never answers
    with SessionClient.open(home, timeout=0.5, retries=40) as c:
        t, result = _in_thread(lambda: c.ensure("survivor", "made after a crash"))
        service.kill()
        start("session-service")
        t.join(30)
        assert not t.is_alive()
        assert "error" not in result, result
        assert result["value"].title == "made after a crash"
        assert [s.id for s in c.list()] == ["survivor"]


@pytest.mark.parametrize("op", ["delete", "rename", "touch", "restore", "create"])
def test_a_write_committed_before_a_crash_is_answered_the_same_when_retried_after(start, home: Path, op: str) -> None:
    # The first attempt commits and is answered, but the answer is "lost" (ignored here, as a
    # client whose receive timed out would); the service is then killed and restarted, and the
    # client's retry (same rid) reaches a service with no memory of it.
    service = start("session-service")
    with SessionClient.open(home) as c:
        victim = c.create("before")
    requests = {
        "delete": {"op": "delete", "id": victim.id},
        "rename": {"op": "rename", "id": victim.id, "title": "after"},
        "touch": {"op": "touch", "id": victim.id},
        "restore": {"op": "restore", "session": {**victim.to_dict(), "id": "restored"}},
        "create": {"op": "create", "title": "no id given: the service picks one"},
    }
    body = msgpack.packb({**requests[op], "rid": f"{op}-once"})
    first = raw_request(home, body)
    assert first["ok"] is True, first
    service.kill()
    start("session-service")
    if op == "restore":  # someone changes it between the attempts: the retry must not undo or refuse
        with SessionClient.open(home) as c:
            c.touch("restored")
    assert raw_request(home, body) == first
    with SessionClient.open(home) as c:
        assert c.stats()["requests"].get("replayed") == 1
        if op == "create":
            assert [s.title for s in c.list()] == [requests["create"]["title"], "before"]


# -- events and CLI ------------------------------------------------------------------------------


def test_session_events_appear_on_the_bus(home: Path, stack, front: Front) -> None:
    with front.connect(home, name="test", timeout=5) as bus, bus.subscribe("session:**") as sub:
        s = bus.sessions.create("evented")
        assert bus.sessions.get(s.id) == s  # a read: no event
        renamed = bus.sessions.rename(s.id, "renamed")
        touched = bus.sessions.touch(s.id)
        ensured_new = bus.sessions.ensure("e-1", "ensured")
        ensured_old = bus.sessions.ensure("e-1", "ignored")
        deleted = bus.sessions.delete(s.id)
        with pytest.raises(sdk.SessionNotFound):
            bus.sessions.delete(s.id)  # refused: no event
        events = [sub.recv(timeout=5) for _ in range(6)]
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0.3)
    assert [(e.type, e.session_id, e.source) for e in events] == [
        ("session:created", s.id, "session-service"),
        ("session:updated", s.id, "session-service"),
        ("session:updated", s.id, "session-service"),
        ("session:created", "e-1", "session-service"),
        ("session:updated", "e-1", "session-service"),
        ("session:deleted", s.id, "session-service"),
    ]
    expected = [s, renamed, touched, ensured_new, ensured_old, deleted]
    assert [e.payload for e in events] == [x.to_dict() for x in expected]


@pytest.mark.parametrize("linger_ms", ["0", "50"])
def test_a_burst_of_writes_is_announced_in_commit_order_even_across_a_stop(home: Path, start, linger_ms: str) -> None:
    """Events held for the linger go in commit order, and a stop publishes what is still held."""
    start("broker")
    service = start("session-service", "--event-linger", linger_ms)
    with sdk.connect(home, name="test", timeout=5) as bus, bus.subscribe("session:created") as sub:
        made = [bus.sessions.create(f"burst {i}").id for i in range(100)]
        service.stop()  # at 50 ms, most of the burst is still held here
        got = [sub.recv(timeout=5) for _ in made]
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0.3)
    assert [e.session_id for e in got] == made
    assert [e.version for e in got] == list(range(got[0].version, got[0].version + len(made)))


def test_changes_made_before_any_broker_runs_are_announced_once_one_does(home: Path, start) -> None:
    """A service without a broker holds its events, in order, and publishes them when one subscribes."""
    start("session-service")
    with SessionClient.open(home, timeout=5.0) as c:
        made = [c.create(f"early {i}").id for i in range(3)]
        held = c.stats()
    assert (held["events_published"], held["events_held"]) == (0, 3)
    start("broker", "--await-log", "30")  # takes no event until the log below has subscribed
    start("event-log")
    with sdk.connect(home, name="test", timeout=5) as bus:
        wait_for(lambda: bus.log_stats(), lambda s: s["last"] >= 3, what="the held events in the log")
        logged = list(bus.replay())
        stats = bus.sessions.stats()
    assert [(e.type, e.session_id, e.source) for e in logged] == [("session:created", i, "session-service") for i in made]
    assert (stats["events_published"], stats["events_held"], stats["events_dropped"]) == (3, 0, 0)


@pytest.mark.parametrize(("option", "high"), [("--event-linger", 1000), ("--spin-us", 10_000)])
def test_tuning_options_must_be_whole_numbers_in_range(home: Path, capsys, option: str, high: int) -> None:
    for bad in ("-1", str(high + 1), "0.5", "soon"):
        done = cli(capsys, "session-service", option, bad, home=home)
        assert done.returncode == 2
        assert f"{option}: must be a whole number from 0 to {high}" in done.stderr


@pytest.mark.parametrize("spin", [(), ("--spin-us", "5000"), ("--spin-us", "0")], ids=["default", "5000", "off"])
def test_a_spinning_service_answers_streams_and_stragglers(home: Path, start, spin: tuple[str, ...]) -> None:
    """Back-to-back requests are found by busy-polling (when a CPU is spare), the rest by waking
    up; with --spin-us 0 nothing spins (its first request once crashed the loop)."""
    start("broker")
    start("session-service", *spin)
    with sdk.connect(home, name="test", timeout=5) as bus, bus.subscribe("session:created") as sub:
        made = [bus.sessions.create(f"spun {i}") for i in range(50)]  # back to back: spins
        assert [bus.sessions.get(s.id) for s in made] == made
        assert [sub.recv(timeout=5).session_id for _ in made] == [s.id for s in made]
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0.3)  # idle longer than the spin: the next request wakes the service
        late = bus.sessions.create("after a pause")
        assert bus.sessions.get(late.id) == late
        assert sub.recv(timeout=5).session_id == late.id
        stats = bus.sessions.stats()
    assert stats["requests"]["create"] == 51
    if spin == ("--spin-us", "0"):
        assert stats["spin_seconds"] == 0.0
    else:
        assert stats["spin_seconds"] >= 0.0


def test_a_pipelining_dealer_gets_every_reply_past_a_full_batch(home: Path, start) -> None:
    """Writes waiting on the socket are drained into one transaction, up to BATCH (256) of them.
    A full batch once read the next request's first frame and left the rest on the socket: that
    request's reply was lost and its remaining frames were taken for a request of their own (6-7
    replies of 2,000 lost in every pipelined run)."""
    start("session-service", "--no-events")
    n = 3 * BATCH  # three full batches, below the ROUTER's SNDHWM of 1,000 replies waiting to go out
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.rcvhwm = 0  # room for every reply while we are still sending: else the ROUTER drops the excess
        dealer.connect(Endpoints.for_home(home).sessions)
        for i in range(n):  # writes the service refuses (a title must be a string): all batched
            dealer.send_multipart([b"", msgpack.packb({"op": "create", "title": i})])
        replies = []
        for _ in range(n):
            assert dealer.poll(10_000), f"only {len(replies)} replies of {n}"
            replies.append(msgpack.unpackb(dealer.recv_multipart()[-1], raw=False))
        assert not dealer.poll(200)  # and nothing more
    finally:
        ctx.destroy(linger=0)
    assert [r["code"] for r in replies] == ["bad_request"] * n
    with SessionClient.open(home, timeout=5.0) as client:
        assert client.stats()["errors"] == {"bad_request": n}


def test_service_runs_without_a_broker(client: SessionClient) -> None:
    assert client.create("no broker").title == "no broker"
    assert client.ping()["status"] == "ok"


def test_cli(home: Path, session_service: Part, capsys) -> None:
    made = cli(capsys, "sessions", "create", "From the CLI", "--json", home=home)
    assert made.returncode == 0, made.stderr
    s = json.loads(made.stdout)
    assert s["title"] == "From the CLI"
    assert cli(capsys, "sessions", "ensure", "cli-2", "Second", "--json", home=home).returncode == 0
    listed = json.loads(cli(capsys, "sessions", "list", "--json", home=home).stdout)
    assert [x["id"] for x in listed["sessions"]] == ["cli-2", s["id"]]
    assert listed["next_cursor"] is None
    table = cli(capsys, "sessions", "list", home=home).stdout.splitlines()
    assert table[0].split() == ["ID", "TITLE", "UPDATED_AT", "CREATED_AT"]
    assert [line.split()[0] for line in table[1:]] == ["cli-2", s["id"]]
    assert json.loads(cli(capsys, "sessions", "rename", "cli-2", "New", "--json", home=home).stdout)["title"] == "New"
    assert cli(capsys, "sessions", "touch", "cli-2", home=home).returncode == 0
    assert json.loads(cli(capsys, "sessions", "get", s["id"], "--json", home=home).stdout) == s
    assert json.loads(cli(capsys, "sessions", "delete", s["id"], "--json", home=home).stdout) == s
    missing = cli(capsys, "sessions", "get", s["id"], home=home)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "not_found" in missing.stderr



def test_a_get_with_an_id_of_the_wrong_type_is_refused(home: Path, session_service: Part) -> None:
    for bad in ([1, 2], {"a": 1}, 7, None):
        reply = raw_request(home, msgpack.packb({"op": "get", "id": bad}))
        assert (reply["ok"], reply["code"]) == (False, "bad_request"), reply
