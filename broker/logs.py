"""Log output of the server parts: human-readable lines (the default) or one JSON object per line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

HUMAN_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
FORMATS = ("human", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is kept.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    ``pid``, ``exc`` when there is a traceback, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="human",
        help="log lines on stderr: human-readable (default) or one JSON object per line",
    )


def configure(log_format: str = "human", level: int = logging.INFO) -> None:
    """Send the process's logs to stderr in ``log_format``; replaces any earlier configuration."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def json_line(message: str, **fields: Any) -> str:
    """A JSON log line for text that did not come through logging (a child's plain output)."""
    entry = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": "INFO",
        "message": message,
        "pid": os.getpid(),
        **fields,
    }
    return json.dumps(entry, default=str, ensure_ascii=False)
