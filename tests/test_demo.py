"""``pryxbus demo`` end to end: the seed's Event Flow Example across four processes, in order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

LINE = re.compile(r"^(\d)  v(\d+)\s+(\S+)\s+(\S+)\s+")
STEPS = [
    (1, "channel:message", "tui"),
    (2, "trace:event", "runtime"),
    (3, "session:created", "session-service"),
    (4, "channel:outbound_message", "channel-manager"),
    (5, "agent:spawned", "agent"),
    (6, "agent:completed", "agent"),
    (7, "trace:event", "runtime"),
    (8, "session:updated", "session-service"),
]


def demo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "demo", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**env, "PYTHONPATH": str(REPO)},
    )


def flow(stdout: str) -> list[tuple[int, int, str, str]]:
    """(step, version, type, source) of each event line the demo printed."""
    return [
        (int(m[1]), int(m[2]), m[3], m[4]) for line in stdout.splitlines() if (m := LINE.match(line))
    ]


def check(result: subprocess.CompletedProcess[str], store_source: str) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    events = flow(result.stdout)
    expected = [(n, t, store_source if t.startswith("session:") else s) for n, t, s in STEPS]
    assert [(n, t, s) for n, _, t, s in events] == expected
    versions = [v for _, v, _, _ in events]
    assert versions == sorted(set(versions)), versions
    assert result.stdout.splitlines()[-1].startswith(
        f"pryxbus demo: ok: 8 steps across 4 processes, versions {versions[0]}..{versions[-1]} in order"
    )


def test_demo_starts_its_own_stack_and_plays_the_eight_steps(tmp_path: Path) -> None:
    # An empty default home: no stack runs there, so the demo starts (and stops) its own.
    env = {**os.environ, "PRYXBUS_HOME": str(tmp_path / "nothing-here")}
    result = demo(env=env)
    check(result, "session-service")
    assert "started for the demo" in result.stdout.splitlines()[0]
    assert flow(result.stdout)[0][1] == 1  # a fresh stack: the flow starts at version 1
    started = re.search(r"in (/tmp/pxb-demo-\S+), started", result.stdout)[1]
    assert not Path(started).exists()  # stopped and cleaned up


def test_demo_on_a_running_broker_without_session_service(home: Path, broker) -> None:
    result = demo("--home", str(home), env=dict(os.environ))
    check(result, "runtime")
    assert "the runtime keeps the session itself" in result.stdout


def test_demo_on_a_running_stack_uses_its_session_service(start, home: Path) -> None:
    start("broker")
    start("session-service")
    result = demo("--home", str(home), env=dict(os.environ))
    check(result, "session-service")
    assert "in the store: 'Chat with User: Hello Pryx!" in result.stdout
    # twice on the same stack: a new session, versions carry on
    again = demo("--home", str(home), env=dict(os.environ))
    check(again, "session-service")
    assert flow(again.stdout)[0][1] > flow(result.stdout)[-1][1]


def test_demo_help() -> None:
    result = demo("--help", env=dict(os.environ))
    assert result.returncode == 0 and "Event Flow Example" in result.stdout
