"""The JSON files in schemas/ are generated from the code and must not drift from it."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import msgpack
import pytest

import schemas
from schemas import export
from schemas.catalogue import CATALOGUE, CATALOGUE_VERSION
from schemas.envelope import ENVELOPE_VERSION, encode_body

REGENERATE = "regenerate with: python -m schemas.export"


@pytest.mark.parametrize("name", sorted(export.FILES))
def test_file_matches_code(name: str) -> None:
    assert (export.HERE / name).read_text() == export.render(name), REGENERATE


def test_catalogue_lists_every_type() -> None:
    doc = json.loads((export.HERE / "catalogue.json").read_text())
    assert doc["catalogue_version"] == CATALOGUE_VERSION
    assert [e["type"] for e in doc["events"]] == list(CATALOGUE)


def test_envelope_schema_describes_the_encoded_body() -> None:
    schema = json.loads((export.HERE / "envelope.schema.json").read_text())
    decoded = msgpack.unpackb(encode_body({"x": 1}, source="s", session_id=None, ts=1.5), raw=False)
    identified = msgpack.unpackb(encode_body({"x": 1}, source="s", session_id=None, ts=1.5, identity=(7, 1)), raw=False)
    assert schema["minItems"] == len(decoded) == 5
    assert schema["maxItems"] == len(identified) == len(schema["prefixItems"]) == 7
    assert identified[:5] == decoded[:5] and identified[5:] == [7, 1]
    assert schema["prefixItems"][0]["const"] == decoded[0] == ENVELOPE_VERSION


def test_protocol_document_states_the_code_constants() -> None:
    text = (export.HERE / "PROTOCOL.md").read_text()
    for fact in ['"!QQ"', "0x95", "0x97", '"!xQxQ"', "XPUB_NODROP", "\\x00sync:", "max_event_size", "## Session service"]:
        assert fact in text


def test_schemas_import_no_zmq() -> None:
    """DESIGN.md §1: dependencies point sdk -> schemas <- broker, and schemas imports no zmq."""
    modules = [f"schemas.{m.name}" for m in pkgutil.iter_modules(schemas.__path__)]
    code = f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; print('zmq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", modules


def test_sdk_never_imports_broker_and_schemas_import_neither() -> None:
    """DESIGN.md §1's arrows as far as they hold (README, Layout, says where broker departs)."""
    import sdk

    for package, forbidden in ((schemas, ("sdk", "broker")), (sdk, ("broker",))):
        modules = [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
        code = (
            f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}];"
            f" print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]", (package.__name__, out.stdout)
