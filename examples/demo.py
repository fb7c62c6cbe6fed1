"""``pryxbus demo``: the seed's Event Flow Example played by four processes through a real stack.

A TUI-like sender, the runtime, a channel manager and an agent (``examples/tui.py``,
``runtime.py``, ``channel_manager.py``, ``agent.py``) each run as a process of their own; this command watches every event of the demo's session
and prints it as it flows, one line per event with its version. If no stack answers in the
home, it starts one (``pryxbus up``; else the broker and, if present, the session service) in a
temporary home on its embedded defaults, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import importlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sdk
from schemas.endpoints import Endpoints, default_home
from sdk.cli.common import add_home, fail

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0
"""Seconds to wait for a started process's ready line."""
STEP_TIMEOUT = 20.0
"""Seconds to wait for the next step of the flow."""


@dataclass(frozen=True)
class Step:
    """One step of the seed's Event Flow Example and the event that shows it happened."""

    number: int
    text: str
    type: str
    sources: tuple[str, ...]
    name: str | None = None  # for trace:event, which store call it announces


def steps(local_sessions: bool) -> list[Step]:
    store = ("runtime",) if local_sessions else ("session-service",)
    return [
        Step(1, "user sends a message (TUI)", "channel:message", ("tui",)),
        Step(2, "runtime creates the session in the store", "trace:event", ("runtime",), "sessions.ensure"),
        Step(3, "session:created, after the commit", "session:created", store),
        Step(4, "channel manager updates the status", "channel:outbound_message", ("channel-manager",)),
        Step(5, "agent processes the message", "agent:spawned", ("agent",)),
        Step(6, "agent completes", "agent:completed", ("agent",)),
        Step(7, "runtime updates the session in the store", "trace:event", ("runtime",), "sessions.rename"),
        Step(8, "session:updated, after the commit", "session:updated", store),
    ]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="play the seed's event flow across four processes",
        description="Play the seed's Event Flow Example (TUI message -> runtime creates the session ->"
        " session:created -> channel manager status -> agent:spawned -> agent:completed -> session"
        " updated -> session:updated) with a TUI-like sender, the runtime, a channel manager and an"
        " agent as separate processes, printing each event with its version as it flows. Uses the"
        " stack running in the home, or starts one in a temporary home and stops it afterwards.",
    )
    add_home(p)
    p.add_argument("--role", choices=("tui", "runtime", "channel-manager", "agent"), help=argparse.SUPPRESS)
    p.add_argument("--session", help=argparse.SUPPRESS)
    p.add_argument("--local-sessions", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_demo)


class DemoFailed(Exception):
    """The demo could not run or the flow went wrong; the message says where."""


# -- child processes ---------------------------------------------------------------------------


class Child:
    """A child process, ``python -m MODULE ARGS``, whose stdout (and stderr) lines are read by a
    thread, for ready lines."""

    def __init__(self, name: str, module: str, args: list[str], *, merge_stderr: bool) -> None:
        self.name = name
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}  # the children import this very checkout
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else None,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise DemoFailed(
                    f"{self.name} printed no ready line within {timeout:g}s{self._tail()}"
                ) from None
            if line is None:
                self.proc.wait()
                raise DemoFailed(
                    f"{self.name} exited with status {self.proc.returncode} before it was ready{self._tail()}"
                )
            self.seen.append(line)
            if "ready" in line:
                return

    def _tail(self) -> str:
        tail = "\n  ".join(self.seen[-10:])
        return f"; its last output:\n  {tail}" if tail else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if it does not stop; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def stack(home: Path | None) -> Iterator[tuple[Path, bool, str]]:
    """(home, whether it has a session service, description) of a stack to play the demo on."""
    home = Path(home).expanduser() if home else default_home()
    running = _probe(home)
    if running is not None:
        yield home, running, f"the stack running in {home}"
        return
    temp = Path(tempfile.mkdtemp(prefix="pxb-demo-", dir="/tmp"))  # short: ipc paths are limited
    parts = [Child("pryxbus up", "broker", ["up", "--home", str(temp)], merge_stderr=True)]
    try:
        for part in parts:
            part.wait_ready()
        yield temp, True, f"pryxbus up in {temp}, started for the demo"
    finally:
        problems = [f"{p.name} exited with status {code}" for p in reversed(parts) if (code := p.stop()) != 0]
        shutil.rmtree(temp, ignore_errors=True)
        if problems and sys.exc_info()[0] is None:
            raise DemoFailed("; ".join(problems) + " on stop")


def _probe(home: Path) -> bool | None:
    """None if no broker answers in ``home``; else whether a session service answers too."""
    endpoints = Endpoints.for_home(home)
    if any(p.name == "con.sock" and not p.exists() for p in endpoints.ipc_paths()):
        return None
    try:
        with sdk.connect(endpoints, name="demo-probe", timeout=1.0) as bus:
            try:
                bus.sessions.ping(timeout=1.0, retries=0)
            except sdk.BusError:
                return False
            return True
    except sdk.BusError:
        return None


# -- the flow ----------------------------------------------------------------------------------


def short(payload: Any, width: int = 34) -> str:
    """A one-line glimpse of a payload."""
    if isinstance(payload, dict):
        keys = [k for k in ("text", "title", "name", "task", "result") if k in payload] or list(payload)
        text = " ".join(f"{k}={payload[k]!r}" for k in keys[:2])
        if "attrs" in payload and isinstance(payload["attrs"], dict) and "title" in payload["attrs"]:
            text += f" title={payload['attrs']['title']!r}"
    else:
        text = repr(payload)
    return text if len(text) <= width else text[: width - 1] + "…"


def _next_of_session(sub: sdk.Subscription, session: str, step: Step, roles: dict[str, Child]) -> sdk.Event:
    """The next event of the demo's session, failing early if a role process died."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        for name, child in roles.items():
            if child.proc.poll() not in (None, 0):
                raise DemoFailed(
                    f"the {name} process failed (status {child.proc.returncode}) before step {step.number}"
                )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DemoFailed(
                f"step {step.number} ({step.text}: {step.type}) did not happen within {STEP_TIMEOUT:g}s"
            )
        try:
            event = sub.recv(timeout=min(remaining, 0.25))  # a slice, to notice a failed role early
        except sdk.BusTimeout:
            continue
        if event.session_id == session:
            return event


def watch(
    sub: sdk.Subscription, flow: list[Step], session: str, roles: dict[str, Child], out: Callable[[str], None]
) -> list[sdk.Event]:
    """Print the session's events as they flow, checking each is the next step; the events."""
    seen: list[sdk.Event] = []
    for step in flow:
        event = _next_of_session(sub, session, step, roles)
        out(
            f"{step.number}  v{event.version:<4}  {event.type:<24}  {event.source:<15}"
            f"  {short(event.payload):<34}  {step.text}"
        )
        name = event.payload.get("name") if isinstance(event.payload, dict) else None
        if event.type != step.type or event.source not in step.sources or (step.name and name != step.name):
            raise DemoFailed(
                f"step {step.number} should be {step.type} from {'/'.join(step.sources)};"
                f" got {event.type} from {event.source}"
            )
        if seen and event.version <= seen[-1].version:
            raise DemoFailed(f"version {event.version} does not follow {seen[-1].version}")
        seen.append(event)
    return seen


def play(home: Path, has_sessions: bool, where: str, out: Callable[[str], None]) -> None:
    session = str(uuid.uuid4())
    flow = steps(local_sessions=not has_sessions)
    out(f"pryxbus demo: {where}")
    if not has_sessions:
        out("pryxbus demo: no session service in this stack; the runtime keeps the session itself")
    out(f"pryxbus demo: session {session}; processes: tui, runtime, channel-manager, agent")
    with ExitStack() as cleanup:
        bus = cleanup.enter_context(sdk.connect(home, name="demo"))
        # Live before any role starts, so nothing is missed; "count" so that a busy shared stack's
        # other traffic cannot end the watch (a lost step still shows as a timeout).
        sub = cleanup.enter_context(bus.subscribe(policy="count"))
        roles: dict[str, Child] = {}

        def stop_roles() -> None:
            for child in roles.values():
                child.stop(timeout=5.0)

        cleanup.callback(stop_roles)
        role_args = ["--home", str(home), "--session", session]
        for name in ("runtime", "channel-manager", "agent", "tui"):  # the sender last, once all listen
            extra = ["--local-sessions"] if name == "runtime" and not has_sessions else []
            roles[name] = Child(name, role_module(name), [*role_args, *extra], merge_stderr=False)
            roles[name].wait_ready()
        out("")
        out(f"#  {'ver':<5}  {'type':<24}  {'source':<15}  {'payload':<34}  step of the seed's flow")
        events = watch(sub, flow, session, roles, out)
        for name, child in roles.items():
            try:
                code = child.proc.wait(STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise DemoFailed(f"the {name} process did not finish within {STEP_TIMEOUT:g}s") from None
            if code != 0:
                raise DemoFailed(f"the {name} process exited with status {code}")
        stored = ""
        if has_sessions:
            s = bus.sessions.get(session)
            stored = f"; in the store: {s.title!r}, updated {s.updated_at.isoformat(timespec='milliseconds')}"
    out("")
    out(
        f"pryxbus demo: ok: {len(flow)} steps across 4 processes, versions"
        f" {events[0].version}..{events[-1].version} in order{stored}"
    )


def role_module(role: str) -> str:
    """The example program that plays ``role``."""
    return f"examples.{role.replace('-', '_')}"


def run_demo(args: argparse.Namespace) -> int:
    if args.role:  # what the demo ran before the roles were programs of their own
        role_args = [*(["--home", str(args.home)] if args.home else []), *(["--session", args.session] if args.session else [])]
        if args.local_sessions and args.role == "runtime":
            role_args.append("--local-sessions")
        return importlib.import_module(role_module(args.role)).main(role_args)

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        with stack(args.home) as (home, has_sessions, where):
            play(home, has_sessions, where, out)
    except DemoFailed as e:
        return fail(f"demo failed: {e}")
    except sdk.BusError as e:
        return fail(f"demo failed: {e}")
    return 0
