"""The event log's request limits, shared by the log (``broker/eventlog``) and its clients (``pryxbus log``).

The ops and their fields are documented in ``PROTOCOL.md``.
"""

from __future__ import annotations

MAX_PAGE = 20_000
"""Most events one ``replay`` or ``tail`` reply holds; a larger ``limit`` is cut to this."""
MAX_INT = (1 << 63) - 1
"""Largest version, count or limit a request may carry (SQLite's largest integer)."""
