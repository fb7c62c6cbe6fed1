"""--log-format json: one JSON object per log line, from the parts and from pryxbus up."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from broker.logs import JsonFormatter
from broker.sessions.store import SCHEMA_VERSION


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_formatter_keeps_level_logger_extras_and_tracebacks() -> None:
    record = logging.LogRecord("pryxbus.test", logging.WARNING, __file__, 1, "lost %d", (3,), None)
    record.topic = "app:x"
    entry = json.loads(JsonFormatter().format(record))
    assert {k: entry[k] for k in ("level", "logger", "message", "topic")} == {
        "level": "WARNING",
        "logger": "pryxbus.test",
        "message": "lost 3",
        "topic": "app:x",
    }
    assert entry["ts"].endswith("Z") and isinstance(entry["pid"], int)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exc"]


def test_a_part_logs_json_lines(home: Path, start) -> None:
    part = start("session-service", "--log-format", "json")
    entries = _json_lines(part.log)
    migrated = f"session schema migrated from version 0 to {SCHEMA_VERSION}"
    assert {"logger": "pryxbus.sessions.store", "message": migrated} in [
        {"logger": e["logger"], "message": e["message"]} for e in entries
    ]


def test_up_logs_json_lines_for_itself_and_its_children(home: Path, start) -> None:
    up = start("up", "--log-format", "json")
    up.stop()
    entries = _json_lines(up.log)
    messages = {(e["logger"], e["message"].split(" (pid")[0]) for e in entries}
    assert {
        ("pryxbus.up", "broker is up"),
        ("pryxbus.up", "session-service is up"),
        ("pryxbus.up", "event-log is up"),
        ("pryxbus.sessions.store", f"session schema migrated from version 0 to {SCHEMA_VERSION}"),
        ("pryxbus.broker", "pryxbus broker stopped at version 0"),  # a child's plain line, wrapped
    } <= messages
    # every line but the ready and stopped lines of up itself is JSON
    plain = [line for line in up.log.splitlines() if line and line[0] not in "{@"]  # @: xprocess's marker
    assert [line.split()[:2] for line in plain] == [["pryxbus", "up"], ["pryxbus", "up"]]
