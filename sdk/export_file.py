"""Reading a session export file as a stream of log rows, within bounds on line and file size.

The file may come from anyone, so the reader holds one line at a time (never the whole file),
refuses a line over :data:`MAX_LINE` bytes or a file over :data:`MAX_FILE` before reading it, and
turns JSON nested too deep for the parser into a clear error instead of a RecursionError.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from typing import IO, Any

from sdk.errors import InvalidEvent

FORMAT = 1
MAGIC = "session-export"
MAX_LINE = 64 << 20
"""Longest line in bytes: an event's body, in base64 and as JSON, fits with room (the log takes
at most 64 MiB in one request, so no bigger event could be imported anyway)."""
MAX_FILE = 16 << 30
"""Largest export file in bytes that import reads."""


class ExportReader:
    """One pass over an export file: ``session`` and ``declared`` from its header, then ``rows()``.

    A context manager with an idempotent ``close()``.

    Raises:
        InvalidEvent: (from the constructor and ``rows()``) the file cannot be read, is too big,
            or is not a well-formed pryxbus session export.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        self._read = 0
        self._line = 0
        try:
            self._file: IO[bytes] = open(path, "rb")
        except OSError as e:
            raise InvalidEvent(f"cannot read session export {self.name!r}: {e}") from None
        try:
            info = os.fstat(self._file.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > MAX_FILE:
                self._too_big()
            header = self._next()
            if not isinstance(header, dict) or header.get("pryxbus") != MAGIC:
                raise InvalidEvent(f"{self.name!r} is not a pryxbus session export")
            if header.get("format") != FORMAT:
                raise InvalidEvent(f"unknown session export format {header.get('format')!r} (this pryxbus reads {FORMAT})")
            session = header.get("session")
            if not (isinstance(session, dict) and isinstance(session.get("id"), str)):
                raise InvalidEvent(f"{self.name!r} is not a pryxbus session export: its header names no session id")
        except BaseException:
            self.close()
            raise
        self.session: dict[str, Any] = session
        self.declared: object = header.get("events")

    def _too_big(self) -> None:
        raise InvalidEvent(f"session export {self.name!r} is larger than {MAX_FILE >> 30} GiB, the most import reads")

    def _next(self) -> Any:
        """The JSON value of the next non-blank line, or None at the end."""
        while True:
            self._line += 1
            number = self._line
            try:
                line = self._file.readline(MAX_LINE + 1)
            except OSError as e:
                raise InvalidEvent(f"cannot read session export {self.name!r}: {e}") from None
            self._read += len(line)
            if self._read > MAX_FILE:
                self._too_big()
            if not line:
                return None
            if len(line) > MAX_LINE:
                raise InvalidEvent(
                    f"line {number} of session export {self.name!r} is longer than {MAX_LINE >> 20} MiB,"
                    " the most import reads (the log takes no event that big)"
                )
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError as e:
                    raise InvalidEvent(f"cannot read session export {self.name!r}: line {number}: {e}") from None
                except RecursionError:
                    raise InvalidEvent(
                        f"cannot read session export {self.name!r}: line {number} nests too deep to parse"
                    ) from None

    def rows(self) -> Iterator[list[Any]]:
        """The log rows ``[version, seq, type, body]`` of the event lines, in file order.

        Raises:
            InvalidEvent: a bad event line, or fewer or more lines than the header declares.
        """
        count = 0
        while True:
            event = self._next()
            if event is None:
                break
            count += 1
            try:
                yield [int(event["version"]), int(event["seq"]), str(event["type"]),
                       base64.b64decode(event["body"], validate=True)]
            except (KeyError, TypeError, ValueError) as e:
                raise InvalidEvent(f"bad event line in session export: {e}") from None
        if self.declared != count:
            what = "truncated" if isinstance(self.declared, int) and count < self.declared else "inconsistent"
            raise InvalidEvent(f"session export is {what}: {count} of {self.declared} events")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ExportReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
