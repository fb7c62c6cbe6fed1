"""The layout's rules (DESIGN.md, STYLE.md), checked on the source: dependencies point
``sdk -> schemas <- broker``, the example roles use only the SDK, and no module imports another
module's underscore-private names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

ROLES = ("tui", "runtime", "channel_manager", "agent")


def imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module, names imported from it) for every import statement in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [alias.name for alias in node.names]


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (REPO / package).rglob("*.py"))


def test_sdk_and_schemas_import_nothing_from_the_server_side() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sources("sdk", "schemas")
        for module, _ in imports(path)
        if module.split(".")[0] in {"broker", "bench", "examples"}
        or (path.parts[len(REPO.parts)] == "schemas" and module.split(".")[0] == "sdk")
    ]
    assert wrong == []


def test_the_example_roles_use_only_the_sdk() -> None:
    ours = {"broker", "schemas", "bench", "examples", "tests"}
    wrong = [
        f"examples/{role}.py imports {module}"
        for role in ROLES
        for module, _ in imports(REPO / "examples" / f"{role}.py")
        if module.split(".")[0] in ours
    ]
    assert wrong == []


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_the_privates_of_another() -> None:
    wrong = []
    for path in sources("broker", "sdk", "schemas", "bench", "examples"):
        for module, names in imports(path):
            if any(map(private, names)) or any(map(private, module.split("."))):
                wrong.append(f"{path.relative_to(REPO)}: from {module} import {', '.join(names) or '...'}")
    assert wrong == []
