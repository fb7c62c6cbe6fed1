"""The example programs in examples/ (the roles of ``pryxbus demo``), each alone against a real broker:
the test plays the other roles' events and checks what the example publishes and that it exits 0.
The four together are tested by tests/test_demo.py."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sdk
from tests.helpers import REPO
from tests.helpers import collect

TIMEOUT = 10.0


@pytest.fixture
def session() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def run_example(home: Path, broker, session: str) -> Iterator:
    """Factory: ``run_example("tui")`` starts ``python -m examples.tui`` in the test's home and
    returns it once it printed its ready line."""
    procs: list[subprocess.Popen[str]] = []

    def run(module: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", f"examples.{module}", "--home", str(home), "--session", session, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, f"examples.{module} printed nothing within {TIMEOUT:g}s"
        assert proc.stdout.readline() == f"{module.replace('_', '-')} ready\n", proc.stderr.read()
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def finished(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err


def test_tui_sends_the_message_and_waits_for_the_answer(bus: sdk.Bus, run_example, session: str) -> None:
    with bus.subscribe("channel:message") as sub:
        tui = run_example("tui")
        message = sub.recv(timeout=TIMEOUT)
        assert (message.source, message.session_id) == ("tui", session)
        assert message.payload["text"].startswith("Hello Pryx!")
        assert tui.poll() is None  # still waiting for the answer
        bus.publish("agent:completed", {"agent_id": "a", "result": "r", "ok": True}, session_id=session)
        finished(tui)


def test_channel_manager_tells_the_channel_once_the_session_exists(bus: sdk.Bus, run_example, session: str) -> None:
    with bus.subscribe("channel:outbound_message") as sub:
        manager = run_example("channel_manager")
        message = {"text": "hi", "channel": "tui", "sender": "user", "message_id": "m-1"}
        bus.publish("channel:message", message, session_id=session)
        bus.publish("session:created", {"id": session, "title": "t"}, session_id=session)
        status = sub.recv(timeout=TIMEOUT)
        assert (status.source, status.session_id) == ("channel-manager", session)
        assert status.payload["reply_to"] == "m-1" and status.payload["recipient"] == "user"
        assert session[:8] in status.payload["text"]
        finished(manager)


def test_agent_answers_once_the_channel_shows_the_status(bus: sdk.Bus, run_example, session: str) -> None:
    with bus.subscribe("agent:*") as sub:
        agent = run_example("agent")
        bus.publish("channel:message", {"text": "one two three"}, session_id=session)
        bus.publish("channel:outbound_message", {"text": "status: thinking"}, session_id=session)
        spawned, completed = collect(sub, 2, timeout=TIMEOUT)
        assert (spawned.type, spawned.source, spawned.payload["task"]) == ("agent:spawned", "agent", "one two three")
        assert completed.type == "agent:completed" and completed.payload["ok"] is True
        assert "3 words" in completed.payload["result"]
        finished(agent)


def test_runtime_keeps_the_session_tracing_each_store_call(bus: sdk.Bus, run_example, session: str) -> None:
    with bus.subscribe("trace:event", "session:**") as sub:
        runtime = run_example("runtime", "--local-sessions")  # the broker alone: no session service
        bus.publish("channel:message", {"text": "Hello there"}, session_id=session)
        trace, created = collect(sub, 2, timeout=TIMEOUT)
        assert trace.payload["name"] == "sessions.ensure" and trace.version < created.version
        assert (created.type, created.source, created.payload["title"]) == ("session:created", "runtime", "Chat with User")
        bus.publish("agent:completed", {"agent_id": "agent-1", "result": "r", "ok": True}, session_id=session)
        trace, updated = collect(sub, 2, timeout=TIMEOUT)
        assert trace.payload["name"] == "sessions.rename" and trace.payload["attrs"]["agent_id"] == "agent-1"
        assert (updated.type, updated.payload["title"]) == ("session:updated", "Chat with User: Hello there")
        assert {e.session_id for e in (trace, created, updated)} == {session}
        finished(runtime)
