"""``pryxbus pub``, ``sub`` and ``stats`` as a user runs them: real processes against a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ENV, cli, pryxbus

def start_sub(*args: str, home: Path) -> subprocess.Popen[str]:
    """``pryxbus sub ARGS``, returned once it says its subscription is live."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "sub", *args, "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    line = proc.stderr.readline()  # the sub gives up after its connect timeout, so this returns
    assert "subscribed" in line, line + proc.stderr.read()
    return proc


def test_pub_then_sub_prints_json_lines(home: Path, broker) -> None:
    sub = start_sub("agent:*", "channel:message", "--count", "3", home=home)
    assert pryxbus("pub", "agent:spawned", '{"agent_id": "a1"}', "--session-id", "s-1", "--name", "tui", home=home).returncode == 0
    assert pryxbus("pub", "session:created", '{"id": "x"}', home=home).returncode == 0  # filtered out
    lines = '{"text": "one"}\n\n{"text": "two"}\n'
    result = pryxbus("pub", "channel:message", "-", home=home, stdin=lines)
    assert (result.returncode, result.stderr) == (0, "")
    out, err = sub.communicate(timeout=30)
    assert sub.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["version"], e["seq"], e["payload"]) for e in events] == [
        ("agent:spawned", 1, 1, {"agent_id": "a1"}),
        ("channel:message", 3, 1, {"text": "one"}),
        ("channel:message", 4, 2, {"text": "two"}),
    ]
    assert (events[0]["source"], events[0]["session_id"], events[1]["source"]) == ("tui", "s-1", "cli")
    assert set(events[0]) == {"type", "version", "seq", "ts", "source", "session_id", "payload"}


def test_pub_without_payload_publishes_null(home: Path, broker) -> None:
    sub = start_sub("--count", "1", home=home)
    assert pryxbus("pub", "trace:event", home=home).returncode == 0
    out, _ = sub.communicate(timeout=30)
    assert json.loads(out)["payload"] is None


def test_sub_timeout_ends_quietly_or_fails_short_of_count(home: Path, broker) -> None:
    quiet = pryxbus("sub", "--timeout", "0.2", home=home)
    assert (quiet.returncode, quiet.stdout) == (0, "")
    short = pryxbus("sub", "--timeout", "0.2", "--count", "2", home=home)
    assert short.returncode == 1
    assert "pryxbus: got 0 of 2 event(s); none for 0.2s" in short.stderr


def test_stats_is_json_with_the_counters(home: Path, broker) -> None:
    sub = start_sub("--count", "2", home=home)
    assert pryxbus("pub", "agent:spawned", '{"agent_id": "a"}', home=home).returncode == 0
    assert pryxbus("pub", "agent:spawned", '{"agent_id": "b"}', home=home).returncode == 0
    sub.communicate(timeout=30)
    result = pryxbus("stats", home=home)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["events_in"], stats["version"], stats["topics"]) == (2, 2, {"agent:spawned": 2})


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (("pub", "not a type", "{}"), None, "pryxbus: invalid event type 'not a type'"),
        (("pub", "agent:spawned", "{oops"), None, "pryxbus: payload is not valid JSON"),
        (("pub", "channel:message", "-"), '{"text": "ok"}\nnope\n', "pryxbus: stdin line 2 is not valid JSON"),
        (("pub", "channel:message", "{}", "--validate"), None, "missing field 'text'"),
        (("sub", "a:**:b"), None, "pryxbus: invalid pattern 'a:**:b'"),
        # non-UTF-8 arguments: the field at fault is named (it used to be "payload: payload cannot be encoded")
        (("pub", "a:b", "1", "--session-id", b"s-\xff"), None,
         "pryxbus: session_id 's-\\udcff' is not valid Unicode text (a lone surrogate at position 2)\n"),
        (("pub", "a:b", "1", "--name", b"\xfe"), None,
         "pryxbus: source '\\udcfe' is not valid Unicode text (a lone surrogate at position 0)\n"),
    ],
)
def test_bad_input_is_one_clear_line(home: Path, broker, args, stdin, message) -> None:
    result = pryxbus(*args, home=home, stdin=stdin)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [("pub", "agent:spawned", "{}"), ("sub",), ("stats",)])
def test_missing_broker_is_a_clear_error(home: Path, command, capsys) -> None:
    result = cli(capsys, *command, home=home)
    assert result.returncode == 1
    assert result.stderr == (
        f"pryxbus: no broker running in {home} (no con.sock); start one with `pryxbus up --home {home}`\n"
    )


@pytest.mark.parametrize("command", ["pub", "sub", "stats"])
def test_help(command: str, tmp_path: Path, capsys) -> None:
    result = cli(capsys, command, "--help", home=tmp_path)
    assert result.returncode == 0 and f"usage: pryxbus {command}" in result.stdout


def test_sub_prints_strict_json_whatever_the_payload(home: Path, broker, bus) -> None:
    deep: list = []
    inner = deep
    for _ in range(900):  # msgpack carries it; JSON encoders would run out of recursion
        inner.append([])
        inner = inner[0]
    sub = start_sub("odd:*", "--count", "3", "--timeout", "20", home=home)
    bus.publish("odd:nan", {"x": float("nan"), "y": [float("inf"), float("-inf")]})
    bus.publish("odd:keys", {b"bk": 1, 2: b"\x00"})
    bus.publish("odd:deep", deep)
    out, err = sub.communicate(timeout=30)
    assert sub.returncode == 0 and "Traceback" not in err, err

    def refuse(constant: str) -> object:
        raise ValueError(constant)

    payloads = [json.loads(line, parse_constant=refuse)["payload"] for line in out.splitlines()]
    assert payloads[:2] == [{"x": "nan", "y": ["inf", "-inf"]}, {"b'bk'": 1, "2": "b'\\x00'"}]
    assert json.dumps(payloads[2]).endswith('"..."' + "]" * 199)  # cut at JSON_DEPTH (200)


@pytest.mark.parametrize("args", [
    ("sub", "--timeout", "nan"), ("sub", "--timeout", "inf"), ("sub", "--timeout", "-1"), ("sub", "--count", "0"),
    ("sub", "--connect", "ipc:///tmp/x"), ("top", "--interval", "nan"), ("top", "--interval", "-1"),
    # server options: these were exit 1 ('broker cannot bind: Invalid argument' for a negative hwm), and
    # a --max-event-size of 0 started a broker that refused every event
    ("up", "--tcp", "garbage"), ("up", "--tcp", "127.0.0.1:65533"), ("broker", "--tcp", "127.0.0.1"),
    ("session-service", "--tcp", "h:p"), ("event-log", "--tcp", "nope"), ("up", "--metrics", "nope"),
    ("broker", "--sub-hwm", "-1"), ("broker", "--in-hwm", "x"), ("broker", "--log-hwm", "-5"),
    ("broker", "--max-event-size", "0"), ("broker", "--await-log", "nan"), ("broker", "--await-log", "-1"),
    ("stats", "--connect", "127.0.0.1:65533"),
])
def test_out_of_range_values_are_usage_errors(home: Path, args: tuple[str, ...], capsys) -> None:
    result = cli(capsys, *args, home=home)
    assert result.returncode == 2 and "error: argument" in result.stderr, result.stderr


def test_the_highest_tcp_base_port_is_accepted() -> None:
    """The stack uses PORT..PORT+5, so 65530 is the highest PORT (65535 its last port)."""
    from schemas.endpoints import Endpoints

    assert Endpoints.parse_tcp("127.0.0.1:65530").log_feed == "tcp://127.0.0.1:65535"
    with pytest.raises(ValueError, match="from 1 to 65530"):
        Endpoints.parse_tcp("127.0.0.1:65531")


def test_pub_refuses_json_nested_too_deep_to_parse(home: Path, broker) -> None:
    """Issue 16: 50,000 levels of brackets printed a RecursionError traceback."""
    deep = "[" * 50_000 + "]" * 50_000
    for result in (pryxbus("pub", "t:a", deep, home=home), pryxbus("pub", "t:a", "-", home=home, stdin=f"[1]\n{deep}\n")):
        assert result.returncode == 1 and "nests too deep to parse" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert "stdin line 2" in result.stderr and "(1 event(s) published before it)" in result.stderr


@pytest.mark.parametrize("payload", ["NaN", "[1e999]", "[-Infinity]"])
def test_pub_refuses_what_is_not_strict_json(home: Path, broker, payload: str) -> None:
    result = pryxbus("pub", "t:a", payload, home=home)
    assert result.returncode == 1 and "is not valid JSON" in result.stderr, result.stderr


def test_sdk_recv_takes_infinity_as_no_limit_and_refuses_nan(bus) -> None:
    import math

    with bus.subscribe("t:*") as sub:
        bus.publish("t:a", 1)
        assert sub.recv(timeout=math.inf).payload == 1
        with pytest.raises(ValueError, match="NaN"):
            sub.recv(timeout=math.nan)


def test_an_event_type_that_is_not_a_str_is_an_invalid_event(bus) -> None:
    import sdk

    for bad in (["a"], {"a": 1}, b"agent:spawned", 7):
        with pytest.raises(sdk.InvalidEvent, match="event type must be a str"):
            bus.publish(bad, 1)
    bus.publish("agent:spawned", 1)  # the bus goes on


def test_a_bad_hwm_or_since_is_an_invalid_event(bus) -> None:
    import sdk

    for options in ({"hwm": -1}, {"hwm": 2**31}, {"hwm": 1.5}, {"hwm": True}, {"since": "x"}, {"since": -1}):
        with pytest.raises(sdk.InvalidEvent, match="hwm|since"):
            bus.subscribe("t:*", **options)
    with bus.subscribe("t:*", hwm=0) as sub:  # 0: no limit, as ZeroMQ has it
        bus.publish("t:a", 1)
        assert sub.recv(timeout=5).payload == 1


def test_ctrl_c_while_the_command_starts_is_no_traceback(tmp_path: Path) -> None:
    """SIGINT while the command modules are still being imported (~0.2 s after every start) was a
    KeyboardInterrupt traceback. The signal is sent by the process itself as zmq begins to import."""
    starter = (
        "import os, signal, sys\n"
        # as a terminal's Ctrl-C finds it, whatever the test runner's process left ignored or blocked
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
        "sent = []\n"
        "def hook(event, args):\n"
        "    if event == 'import' and args[0] == 'zmq' and not sent:\n"
        "        sent.append(1)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.addaudithook(hook)\n"
        "from broker.cli import main\n"
        f"sys.exit(main(['stats', '--home', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, env=ENV)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", ""), f"stderr: {done.stderr!r}"
