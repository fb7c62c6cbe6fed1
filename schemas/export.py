"""The JSON files shipped beside the code: the event catalogue and the envelope's JSON Schema.

``python -m schemas.export`` rewrites ``schemas/catalogue.json`` and ``schemas/envelope.schema.json``
from the code; ``tests/test_schema_files.py`` fails if they drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.catalogue import CATALOGUE_VERSION, describe
from schemas.envelope import ENVELOPE_VERSION
from schemas.topics import MAX_TYPE_LENGTH

HERE = Path(__file__).resolve().parent


def catalogue_document() -> dict[str, Any]:
    """What ``schemas/catalogue.json`` holds: the catalogue version and :func:`describe`."""
    return {"catalogue_version": CATALOGUE_VERSION, "events": describe()}


def envelope_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a decoded body frame: ``[1, ts, source, session_id, payload]``, or
    identified, with ``publisher_id, number`` after the payload (PROTOCOL.md §4.1)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://pryxbus.invalid/schemas/envelope.schema.json",
        "title": "pryxbus event envelope",
        "description": (
            "The body frame of a pryxbus event, decoded from msgpack (schemas/PROTOCOL.md section 3)."
            f" Event types (the topic frame) are at most {MAX_TYPE_LENGTH} bytes."
        ),
        "type": "array",
        "prefixItems": [
            {"const": ENVELOPE_VERSION, "description": "envelope layout version"},
            {"type": "number", "description": "publish time, seconds since the Unix epoch"},
            {"type": "string", "description": "the publishing component's name"},
            {"type": ["string", "null"], "description": "the session the event belongs to"},
            {"description": "the event's data; any msgpack value"},
            {
                "type": "integer",
                "minimum": 1,
                "maximum": 2**64 - 1,
                "description": "identified only: the publisher's id (a msgpack uint64)",
            },
            {
                "type": "integer",
                "minimum": 1,
                "maximum": 2**64 - 1,
                "description": "identified only: the event's number, bit 63 set to ask for its version (a msgpack uint64)",
            },
        ],
        "items": False,
        "minItems": 5,
        "maxItems": 7,
    }


FILES = {"catalogue.json": catalogue_document, "envelope.schema.json": envelope_schema}


def render(name: str) -> str:
    """The exact text of one generated file."""
    return json.dumps(FILES[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name in FILES:
        (HERE / name).write_text(render(name))
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
