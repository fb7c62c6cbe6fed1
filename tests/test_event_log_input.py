"""The event log and ``pryxbus log ...`` with careless or hostile input: strict JSON out whatever the
payloads hold, clear errors (never tracebacks) for bad values and missing stacks, one structured
reply per request (issue 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import zmq

import sdk
from schemas.endpoints import Endpoints
from tests.helpers import REPO, wait_logged


def pryxbus(*args: str | bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def strict_json(line: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_payloads_json_lacks_come_out_as_strict_json(home: Path, event_log, bus: sdk.Bus) -> None:
    bus.publish("odd:nan", {"x": float("nan"), "y": float("inf")})
    bus.publish("odd:keys", {b"bk": 1, 2: [b"\x00\x01"]})
    wait_logged(bus, 2)
    for command in (("log", "tail", "odd:*"), ("log", "query", "odd:*")):
        done = pryxbus(*command, "--home", str(home))
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        payloads = [strict_json(line)["payload"] for line in done.stdout.splitlines()]
        assert payloads == [{"x": "nan", "y": "inf"}, {"b'bk'": 1, "2": ["b'\\x00\\x01'"]}]
    assert [e.payload for e in bus.replay("odd:*")][1] == {b"bk": 1, 2: [b"\x00\x01"]}  # the log kept them exactly


def test_log_commands_without_a_stack_say_so_at_once(home: Path) -> None:
    """They used to wait for the broker (which they do not need) through every retry: 10 s by
    default, then 'broker ... did not answer'. Now: the log's socket is missing, at once."""
    for command in (("log", "stats"), ("log", "tail"), ("log", "query"), ("log", "tail", "-f")):
        done = pryxbus(*command, "--home", str(home), "--timeout", "30")
        assert done.returncode == 3, done.stderr
        assert done.stderr == (
            f"pryxbus: nothing listens at ipc://{home}/log.sock (no such socket): is the stack running? ('pryxbus up')\n"
        )


def test_a_session_id_that_is_not_unicode_is_one_clear_line(home: Path, event_log, bus: sdk.Bus) -> None:
    """A non-UTF-8 argument reaches Python as a lone surrogate, which msgpack cannot encode: that was
    a traceback from the request's encoder (sync and asyncio)."""
    for command in (("log", "query", "--session"), ("log", "tail", "--session"), ("log", "tail", "-f", "--session")):
        done = pryxbus(*command, b"s-\xff", "--home", str(home))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr == "pryxbus: 'session_id' is not valid Unicode text (a lone surrogate at position 2)\n"
    with pytest.raises(sdk.InvalidEvent, match="'session_id' is not valid Unicode"):
        list(bus.replay(session_id="\udcff"))
    assert bus.log_stats()["bad_requests"] == 0  # refused before anything was sent


@pytest.mark.parametrize("args", [
    ("log", "tail", "-n", "0"), ("log", "tail", "-n", "99999999999999999999"), ("log", "tail", "-n", "20001"),
    ("log", "query", "--since", "18446744073709551615"), ("log", "query", "--until", "-1"),
    ("log", "query", "--limit", "-1"), ("log", "query", "--limit", "0"),
    ("event-log", "--retain-events", "-1"), ("event-log", "--retain-events", "0"),
    ("event-log", "--retain-seconds", "nan"), ("event-log", "--retain-seconds", "-1"),
    ("event-log", "--retain-interval", "0"), ("event-log", "--rcvhwm", "0"),
])
def test_out_of_range_options_are_usage_errors(home: Path, args: tuple[str, ...]) -> None:
    done = pryxbus(*args, "--home", str(home))
    assert done.returncode == 2 and "error: argument" in done.stderr, done.stderr


@pytest.mark.parametrize("when", ["nan", "inf", "-inf", "1e400", "yesterday", "2026-13-01"])
def test_times_that_are_not_times_are_usage_errors(home: Path, when: str) -> None:
    for option in ("--from", "--to"):
        done = pryxbus("log", "query", f"{option}={when}", "--home", str(home))
        assert done.returncode == 2, done.stderr  # was 1
        assert f"error: argument {option}: not a time (epoch seconds or ISO 8601): {when!r}" in done.stderr


def _ask(home: Path, *frames: bytes) -> list[dict]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(Endpoints.for_home(home).log)
    try:
        sock.send_multipart(list(frames))
        assert sock.poll(5000), "the log did not answer"
        return [msgpack.unpackb(f, raw=False) for f in sock.recv_multipart()]
    finally:
        sock.close()
        ctx.term()


def test_requests_beyond_range_or_in_pieces_get_one_structured_error(home: Path, event_log, bus: sdk.Bus) -> None:
    bus.publish("channel:message", {"n": 1})
    wait_logged(bus, 1)
    for request in ({"op": "replay", "since": 2**64 - 1}, {"op": "replay", "until": 2**63},
                    {"op": "tail", "limit": 2**64 - 1}, {"op": "replay", "ts_from": float("nan")},
                    {"op": "summary", "bucket": float("inf")}, {"op": "summary", "bucket": 1e-300}):
        [reply] = _ask(home, msgpack.packb(request))
        assert (reply["ok"], reply["code"]) == (False, "bad_request"), (request, reply)
    [reply] = _ask(home, msgpack.packb({"op": "ping"}), b"extra")  # never the request echoed back
    assert (reply["ok"], reply["code"]) == (False, "bad_request") and "one request frame" in reply["message"]
    [reply] = _ask(home, msgpack.packb({"op": "replay", "since": None}))  # nil: the default, from the start
    assert reply["ok"] and [row[0] for row in reply["result"]["events"]] == [1]


def test_a_file_that_is_not_an_event_log_is_a_clear_error(home: Path, broker) -> None:
    (home / "events.db").write_text("not a database\n" * 100)
    done = pryxbus("event-log", "--home", str(home), "--wait", "5")
    assert done.returncode == 1 and "as the event log" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_events_the_log_cannot_keep_are_malformed_not_lost(home: Path, event_log, bus: sdk.Bus) -> None:
    from schemas.envelope import encode_body
    from tests.helpers import raw_publisher

    ctx = zmq.Context()
    try:
        raw = raw_publisher(ctx, Endpoints.for_home(home).publish)
        good = encode_body({"ok": True}, source="raw", session_id=None)
        bad = [b"\x95garbage", b"\x95" + good[1:-1], good[:1] + b"\xc1" * 8]  # the broker checks the first byte only
        for i in range(6):
            raw.send_multipart([b"raw:good", good])
            raw.send_multipart([b"raw:bad", bad[i % len(bad)]])
        raw.send_multipart([b"raw:good", good])
        raw.close()
    finally:
        ctx.term()
    stats = wait_logged(bus, 13)
    assert stats["malformed"] == 6
    assert (stats["lost"], stats["gaps"], stats["reconnects"], stats["recent_gaps"]) == (0, 0, 0, [])
    assert [e.version for e in bus.replay()] == [1, 3, 5, 7, 9, 11, 13]


def test_a_request_of_countless_containers_is_refused_not_decoded(home: Path, event_log, bus: sdk.Bus) -> None:
    """Empty arrays cost one byte on the wire and ~60 in Python: 8 MB of them took the log from 39
    to 615 MB. Past 50,000 arrays and maps a request is a bad_request, and the log goes on."""
    bomb = msgpack.packb({"op": "import", "events": [[]] * 3_000_000})
    [reply] = _ask(home, bomb)
    assert (reply["ok"], reply["code"]) == (False, "bad_request") and "50000 arrays and maps" in reply["message"]
    [reply] = _ask(home, msgpack.packb({"op": "ping"}))
    assert reply["ok"]
    assert bus.log_stats()["bad_requests"] >= 1


def test_an_import_goes_in_requests_the_log_takes() -> None:
    """The log refuses a request over 64 MiB whatever its event count: an import is cut by bytes too."""
    from sdk.session_archive import IMPORT_BYTES, IMPORT_CHUNK, import_chunks

    small = [[v, v, "a:b", b"x" * 10] for v in range(1, 4500)]
    assert [len(c) for c in import_chunks(small)] == [IMPORT_CHUNK, IMPORT_CHUNK, 499]
    big = [[v, v, "a:b", b"x" * (100 * 1024)] for v in range(1, 701)]  # 70 MB: one request used to hold it all
    chunks = list(import_chunks(big))
    assert [r for c in chunks for r in c] == big
    assert all(sum(len(r[3]) for r in c) <= IMPORT_BYTES for c in chunks) and len(chunks) == 5
    huge = [[1, 1, "a:b", b"x" * (IMPORT_BYTES + 1)], [2, 2, "a:b", b"y"]]  # one event alone may be bigger
    assert [len(c) for c in import_chunks(huge)] == [1, 1]
