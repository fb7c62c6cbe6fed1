"""The docs keep up with the code: every ``pryxbus`` command and option is in docs/cli.md, every
relative link in README.md, CHANGELOG.md and docs/ resolves (sqlite-utils tests its CLI docs the same way)."""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = ROOT / "docs" / "cli.md"
LINKED_DOCS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "bench" / "reference" / "history.md",
    *sorted((ROOT / "docs").glob("*.md")),
]

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def build_parser() -> argparse.ArgumentParser:
    """The real parser, found through the ``pryxbus`` console script, wherever its module lives."""
    main = entry_points(group="console_scripts")["pryxbus"].load()
    return importlib.import_module(main.__module__).build_parser()


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ("pryxbus",)) -> Iterator[
    tuple[str, argparse.ArgumentParser]
]:
    """Every command and sub-command under ``parser``, as ("pryxbus log tail", its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield " ".join((*words, name)), sub
                yield from commands(sub, (*words, name))


def options(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings a user can see in ``--help`` (hidden ones and -h/--help left out)."""
    return [
        flag
        for action in parser._actions
        if action.option_strings
        and action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
    ]


def sections(markdown: str) -> dict[str, str]:
    """Each heading's text (backticks removed) -> its section, down to the next heading of the same
    or a higher level (so a group's section holds its sub-commands' sections)."""
    lines = markdown.splitlines()
    heads = [(i, len(m[1]), m[2].replace("`", "")) for i, line in enumerate(lines) if (m := _HEADING.match(line))]
    found = {}
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lvl, _ in heads[n + 1 :] if lvl <= level), len(lines))
        found[title] = "\n".join(lines[i:end])
    return found


def command_section(command: str, by_title: dict[str, str]) -> str | None:
    """The section whose heading is ``command`` (followed by nothing or by its usage)."""
    for title, text in by_title.items():
        if title == command or title.startswith(command + " "):
            return text
    return None


def undocumented(parser: argparse.ArgumentParser, markdown: str) -> list[str]:
    """What of ``parser`` the markdown does not document: commands without a heading of their own,
    options missing as a code span in their command's section (or an enclosing group's, or the
    section "Common options")."""
    by_title = sections(markdown)
    common = by_title.get("Common options", "")
    missing = []
    for command, sub in commands(parser):
        section = command_section(command, by_title)
        if section is None:
            missing.append(command)
            continue
        words = command.split()
        around = [command_section(" ".join(words[:n]), by_title) or "" for n in range(2, len(words))]
        spans = set()
        for text in (section, common, *around):
            spans.update(span.split()[0].split("=")[0] for span in _CODE_SPAN.findall(text) if span.split())
        missing += [f"{command} {flag}" for flag in options(sub) if flag not in spans]
    return missing


def test_every_command_and_option_is_in_the_cli_doc() -> None:
    assert undocumented(build_parser(), CLI_DOC.read_text(encoding="utf-8")) == []


def heading_command(title: str) -> str:
    """The command a heading names: its leading lower-case words ("pryxbus sessions get ID" ->
    "pryxbus sessions get")."""
    words = []
    for word in title.split():
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        words.append(word)
    return " ".join(words)


def test_the_cli_doc_names_only_real_commands() -> None:
    real = {command for command, _ in commands(build_parser())}
    titled = {heading_command(t) for t in sections(CLI_DOC.read_text(encoding="utf-8")) if t.startswith("pryxbus ")}
    assert titled - real == set()


def test_a_command_added_without_docs_is_caught() -> None:
    parser = build_parser()
    groups = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = groups.add_parser("frobnicate")
    extra.add_argument("--level")
    log = next(a for a in groups.choices["log"]._actions if isinstance(a, argparse._SubParsersAction))
    log.choices["tail"].add_argument("--undocumented-flag")
    missing = undocumented(parser, CLI_DOC.read_text(encoding="utf-8"))
    assert missing == ["pryxbus log tail --undocumented-flag", "pryxbus frobnicate"]


def test_the_walk_reaches_nested_commands() -> None:
    found = {command for command, _ in commands(build_parser())}
    assert {"pryxbus up", "pryxbus log tail", "pryxbus sessions create", "pryxbus keys generate"} <= found


def relative_links(path: Path) -> Iterator[str]:
    """Link targets in a markdown file that point into the repository (no scheme, not an anchor)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    for target in _LINK.findall(text):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#"):
            yield target


def broken_links(path: Path) -> list[str]:
    return [t for t in relative_links(path) if not (path.parent / t.split("#", 1)[0]).exists()]


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    assert broken_links(doc) == []


def test_docs_exist_to_be_checked() -> None:
    assert {p.name for p in LINKED_DOCS} >= {"README.md", "cli.md", "sdk.md", "operations.md", "performance.md"}


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("x")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](there.md) [ok too](there.md#part) [web](https://example.org) [gone](docs/nowhere.md)\n")
    assert broken_links(doc) == ["docs/nowhere.md"]


def test_the_command_map_names_what_each_module_registers() -> None:
    """``pryxbus COMMAND`` imports only the module COMMANDS names for it: the map must be right."""
    from broker.cli import COMMANDS

    for name, commands in COMMANDS.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(subparsers)
        assert tuple(subparsers.choices) == commands, name
