"""``pryxbus sessions ...`` and the session client with careless or hostile input: every case ends in
a clear error or a safe rendering, never a hang, a traceback or a terminal taken over (issue 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

import sdk
from sdk.sessions import SessionClient
from tests.helpers import ENV, Part, cli, pryxbus, raw_request


@pytest.fixture
def client(home: Path, session_service: Part):
    with SessionClient.open(home, timeout=5.0) as c:
        yield c


def test_tables_show_control_characters_as_escapes(client: SessionClient, home: Path, capsys) -> None:
    hostile = "\x1b[31mR\x1b[0m\x1b]0;t\x07\x1b[2J\rx\ty\u202ez"  # colour, window title, clear, overwrite
    made = client.create(hostile)
    table = cli(capsys, "sessions", "get", made.id, home=home)
    assert table.returncode == 0, table.stderr
    row = table.stdout.splitlines()[1]
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in row), repr(row)
    assert "\\x1b[31mR\\x1b[0m\\x1b]0;t\\x07\\x1b[2J\\rx\\ty\\u202ez" in row
    exact = json.loads(cli(capsys, "sessions", "get", made.id, "--json", home=home).stdout)
    assert exact["title"] == hostile  # --json carries the title exactly


def test_list_from_an_offset_says_where_the_next_page_starts(client: SessionClient, home: Path, capsys) -> None:
    ids = [client.create(f"s{i}").id for i in range(5)]
    newest_first = ids[::-1]
    first = json.loads(cli(capsys, "sessions", "list", "--offset", "1", "--limit", "2", "--json", home=home).stdout)
    assert [s["id"] for s in first["sessions"]] == newest_first[1:3]
    assert first["next_cursor"] is not None
    rest = json.loads(cli(capsys, "sessions", "list", "--cursor", first["next_cursor"], "--json", home=home).stdout)
    assert [s["id"] for s in rest["sessions"]] == newest_first[3:] and rest["next_cursor"] is None
    assert [s.id for s in client.page(2, offset=1).sessions] == newest_first[1:3]


def test_errors_are_json_too_with_json(home: Path, session_service: Part, capsys) -> None:
    missing = cli(capsys, "sessions", "get", "nobody", "--json", home=home)
    assert missing.returncode == 1
    error = json.loads(missing.stdout)
    assert (error["ok"], error["code"]) == (False, "not_found") and "nobody" in error["message"]
    assert "not_found" in missing.stderr


@pytest.mark.parametrize("args", [("list", "--limit", "0"), ("get",), ("get", "a", "b"), ("bogus",),
                                  ("stats", "--bucket", "nan")])
def test_usage_errors_are_json_too_with_json(home: Path, args: tuple[str, ...], capsys) -> None:
    """A script that reads stdout got nothing at all for a usage error: only the usage on stderr."""
    done = cli(capsys, "sessions", *args, "--json", home=home)
    assert done.returncode == 2 and "usage: pryxbus" in done.stderr, done.stderr
    error = json.loads(done.stdout)
    assert (error["ok"], error["code"]) == (False, "usage")
    assert error["message"] == done.stderr.splitlines()[-1].replace(": error: ", ": ", 1)  # what stderr says
    plain = cli(capsys, "sessions", *args, home=home)
    assert (plain.returncode, plain.stdout) == (2, "")  # without --json: the usage on stderr only


def test_without_a_running_stack_the_cli_says_so_at_once(home: Path, capsys) -> None:
    done = cli(capsys, "sessions", "list", "--json", home=home)
    assert done.returncode == 3
    assert json.loads(done.stdout)["code"] == "unavailable"
    assert "no such socket" in done.stderr and "pryxbus up" in done.stderr


@pytest.mark.parametrize("args", [
    ("--timeout", "nan"), ("--timeout", "-1"), ("--timeout", "0"), ("--timeout", "inf"),
    ("--connect", "garbage"), ("--connect", "ipc:///tmp/x"),
    ("--limit", "0"), ("--limit", "101"), ("--offset", "-1"),  # the help says 1..100; they were exit 1 or 3
])
def test_bad_timeouts_and_targets_are_usage_errors(home: Path, args: tuple[str, str], capsys) -> None:
    done = cli(capsys, "sessions", "list", *args, home=home)
    assert done.returncode == 2 and f"argument {args[0]}" in done.stderr, done.stderr


@pytest.mark.parametrize("bucket", ["0", "-5", "nan", "inf", "0.0009", "x"])
def test_a_bucket_out_of_range_is_a_usage_error(home: Path, bucket: str, capsys) -> None:
    done = cli(capsys, "sessions", "stats", "--bucket", bucket, home=home)  # was exit 1, from the event log's bad_request
    assert done.returncode == 2 and "argument --bucket: must be a number of seconds from 0.001" in done.stderr, done.stderr


def test_a_home_too_long_for_ipc_sockets_is_a_clear_error(tmp_path: Path) -> None:
    long_home = tmp_path / ("d" * 110)
    long_home.mkdir()
    with pytest.raises(sdk.InvalidEvent, match="too long for ipc sockets"):
        SessionClient.open(long_home)
    with pytest.raises(sdk.InvalidEvent, match="too long for ipc sockets"):
        sdk.connect(long_home)
    for command in (("sessions", "get", "x"), ("session-service",), ("broker",)):
        done = pryxbus(*command, "--home", str(long_home))
        assert done.returncode in (1, 2) and "too long for ipc sockets" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_text_that_is_not_unicode_is_refused_before_it_is_sent(client: SessionClient, home: Path) -> None:
    for call in (lambda: client.create("bad \ud800"), lambda: client.get("\udcff"), lambda: client.ensure("x", "\udcff")):
        with pytest.raises(sdk.SessionError) as refused:
            call()
        assert refused.value.code == "bad_request" and "not valid Unicode" in str(refused.value)
    assert client.create("fine").title == "fine"  # the client goes on
    done = subprocess.run([sys.executable, "-m", "broker", "sessions", "create", b"\xff\xfe x", "--home", str(home)],
                          capture_output=True, text=True, timeout=30, env=ENV)
    assert done.returncode == 1 and "not valid Unicode" in done.stderr and "Traceback" not in done.stderr


def test_offsets_beyond_sqlite_integers_are_bad_requests(client: SessionClient, home: Path) -> None:
    reply = raw_request(home, msgpack.packb({"op": "list", "offset": 2**64 - 1}))
    assert (reply["ok"], reply["code"]) == (False, "bad_request"), reply
    with pytest.raises(sdk.SessionError) as refused:
        client.list(10, offset=10**30)
    assert refused.value.code == "bad_request"
    assert client.ping()["status"] == "ok"


def test_restores_from_the_future_or_out_of_range_are_refused(client: SessionClient) -> None:
    for when in ("2100-01-01T00:00:00+00:00", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        with pytest.raises(sdk.SessionError) as refused:
            client.restore({"id": "from-elsewhere", "title": "t", "created_at": when, "updated_at": when})
        assert refused.value.code == "bad_request", when
    with pytest.raises(sdk.SessionNotFound):
        client.get("from-elsewhere")
    past = client.restore({"id": "old", "title": "t", "created_at": "2020-01-01T00:00:00+00:00",
                           "updated_at": "2020-01-01T00:00:00+00:00"})
    assert past.to_dict()["updated_at"] == "2020-01-01T00:00:00.000000+00:00"  # fixed width, as stored


def test_a_file_that_is_not_a_database_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 100)
    done = pryxbus("session-service", "--home", str(home), "--db", str(text))
    assert done.returncode == 1 and f"cannot use {text} as the session database" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert text.read_text() == "not a database at all\n" * 100  # left as it was


def test_an_endpoint_that_cannot_be_connected_is_unavailable_and_closing_does_not_hang() -> None:
    from schemas.endpoints import Endpoints

    unreachable = Endpoints.ipc("/tmp").with_(sessions=f"ipc:///tmp/{'x' * 200}.sock")  # past any check
    with SessionClient.open(unreachable, timeout=1.0) as c:
        with pytest.raises(sdk.BusUnavailable, match="cannot connect to the session service"):
            c.get("x")
    # leaving the block closed the client and terminated its context: a leaked socket would hang here


@pytest.mark.parametrize("command", [("up",), ("broker",), ("session-service",), ("event-log",), ("keys", "generate")])
def test_a_home_that_cannot_be_made_is_a_clear_error(tmp_path: Path, command: tuple[str, ...]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    done = pryxbus(*command, "--home", str(blocker / "home"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(blocker / "home") in done.stderr and "Not a directory" in done.stderr
