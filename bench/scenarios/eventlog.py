"""The event log's cost and speed: bus throughput with the log off vs on, and replay from a warm log.

"Log on" is a broker with the ``pryxbus event-log`` process beside it (what ``pryxbus up`` runs);
"log off" is the broker alone. With the log on, the run also checks the log kept every event
(its stats show no gap or loss), else the run fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.peers import REPO
from bench.results import Case, Metric, RunResult
from bench.scenarios.common import Env, rate, run_pubsub
from bench.sides import Side, SideError

RATE = Metric("rate", "delivered", "events/s")
REPLAY = Metric("replay", "replayed", "events/s")


def log_stats(home: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "broker", "log", "stats", "--home", home],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pryxbus log stats: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout)


def _throughput(stack: str, batched: bool = False):
    def run(system: str, env: Env) -> RunResult:
        n = env.scale(100_000, 150_000)  # as throughput 1→1: shorter runs measure start-up
        if batched:
            n *= 10
        wiring = env.wirings[stack]
        before = log_stats(wiring["home"]) if stack == "pryxbus.log" else None
        out = run_pubsub(wiring, publishers=1, subscribers=1, per_publisher=n, payload_size=64, batched=batched)
        if isinstance(out, RunResult):
            return out
        loss = out.loss()
        if loss:
            return RunResult.failed(loss)
        details: dict[str, Any] = {"events": n}
        if before is not None:
            problem = _log_kept_up(wiring["home"], before, n)
            if problem:
                return RunResult.failed(problem)
        return RunResult(values={"rate": rate(n, out.t0, out.subs[0]["end"])}, details=details)

    return run


def _log_kept_up(home: str, before: dict[str, Any], sent: int, timeout: float = 30.0) -> str | None:
    """None once the log holds ``sent`` more events (probes included) with no new gap or loss."""
    deadline = time.monotonic() + timeout
    while True:
        now = log_stats(home)
        bad = {
            k: now[k] - before.get(k, 0)
            for k in ("gaps", "lost", "missed", "dropped")
            if isinstance(now.get(k), int) and now[k] != before.get(k, 0)
        }
        if any(bad.values()):
            return f"the event log recorded {bad} during the run"
        logged = (now.get("last") or 0) - (before.get("last") or 0)
        if logged >= sent:
            return None
        if time.monotonic() > deadline:
            return f"the event log holds {logged} of the {sent}+ events sent"
        time.sleep(0.1)  # sync-ok: the log writes in batches; poll its stats until it caught up


def replay_side(conn: Any, home: str) -> None:
    import sdk

    with sdk.connect(home, name="bench-replay", timeout=30.0) as bus:
        for _ in bus.replay(until=100):
            pass  # warm the connection and the log's caches
        t0 = time.monotonic_ns()
        n = sum(1 for _ in bus.replay())
        t1 = time.monotonic_ns()
    conn.send(("result", {"events": n, "t0": t0, "t1": t1}))


def _replay(system: str, env: Env) -> RunResult:
    side = Side("replay", replay_side, env.wirings["pryxbus.log"]["home"])
    try:
        out = side.expect("result", 300)
    except SideError as e:
        return RunResult.failed(str(e))
    finally:
        side.stop()
    if out["events"] == 0:
        return RunResult.failed("the log replayed no events")
    return RunResult(values={"replay": rate(out["events"], out["t0"], out["t1"])}, details={"events": out["events"]})


def cases(env: Env) -> list[Case]:
    return [
        Case("eventlog", "1→1, 64 B, log off", (RATE,), ("pryxbus",), _throughput("pryxbus")),
        Case("eventlog", "1→1, 64 B, log on", (RATE,), ("pryxbus",), _throughput("pryxbus.log")),
        Case("eventlog", "1→1, 64 B, batched, log off", (RATE,), ("pryxbus",), _throughput("pryxbus", True)),
        Case("eventlog", "1→1, 64 B, batched, log on", (RATE,), ("pryxbus",), _throughput("pryxbus.log", True)),
        Case("eventlog", "replay, warm log", (REPLAY,), ("pryxbus",), _replay),
    ]
