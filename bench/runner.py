"""Runs the bench: start the servers, run every case for every system N times, report, stop.

Repeats are the outer loop (run 1 of everything, then run 2, ...) so a noisy moment on a shared
machine spreads over all systems instead of hitting one. A measurement whose run fails (lost
events, a crashed side) is not repeated and is reported FAILED.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from bench import peers
from bench.histogram import Histogram
from bench.report import charts, evaluate_targets, machine, machine_lines, table, targets_table, write_json
from bench.results import SCHEMA_VERSION, Case, Measurement, RunResult
from bench.scenarios import SCENARIOS
from bench.scenarios.common import PUBSUB, Env

PEERS = ("zmq", "zmq.proxy", "redis", "nats", "zmq.reqrep", "sqlite", "sidecar")
ORDER = ("pryxbus", *PEERS)
BROKER_OPTIONS = ("--sub-hwm", "1000000", "--sub-bytes", "0")
"""The broker's per-subscriber queue raised to what the zmq.proxy peer gets (and Redis's/NATS's
buffers are raised to), with no byte cap: with the default 10000, a subscriber starved of CPU on 2
busy cores loses events in a 150k burst, and the run is (rightly) reported FAILED instead of measured."""


class Progress:
    """One line on stderr, rewritten in place on a terminal, appended otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def show(self, text: str) -> None:
        line = f"[{self.done}/{self.total} {time.monotonic() - self.started:5.1f}s] {text}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.flush()


def select_peers(spec: str) -> set[str]:
    """``all``, ``none`` or a comma list of peer names."""
    if spec == "all":
        return set(PEERS)
    if spec == "none":
        return set()
    chosen = {p.strip() for p in spec.split(",") if p.strip()}
    unknown = chosen - set(PEERS)
    if unknown:
        raise SystemExit(f"bench: unknown peer(s) {sorted(unknown)}; known: {', '.join(PEERS)}")
    return chosen


def select_scenarios(names: list[str] | None) -> list[str]:
    """The scenarios named (each once, in the order given), or all."""
    if not names:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"bench: unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    return list(dict.fromkeys(names))


CHARTS = ("throughput.png", "latency.png", "sessions.png")
"""Every chart a run may write: a run removes the ones it does not write from its output directory."""


def prepare_out(out: Path) -> None:
    """Make sure the results can be written before anything is measured; a clear error if not."""
    probe = out / ".bench-write-check"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"bench: --out {out}: cannot write results there ({e.strerror or e})") from None


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: every server started is stopped by pid


def start_servers(env: Env, scenarios: list[str], chosen: set[str], stack: ExitStack, progress: Progress) -> dict[str, str]:
    """Start what the chosen scenarios need; returns ``{system: why skipped}`` for those that cannot run."""
    skipped: dict[str, str] = {}
    pubsub = any(s in scenarios for s in ("throughput", "fanout", "fanin", "latency", "isolation"))
    root = env.workdir

    def start(system: str, fn: Any, *args: Any) -> None:
        try:
            server = fn(*args)
        except peers.ServerError as e:
            skipped[system] = f"could not start: {e}"
            progress.note(f"skipping {system}: {skipped[system]}")
            return
        stack.callback(server.stop)
        env.wirings[system] = server.wiring
        env.shared.setdefault("servers", {}).setdefault(system, []).append(server)

    if pubsub or "eventlog" in scenarios or "filter" in scenarios:  # "log off" runs on this broker
        start("pryxbus", peers.start_pryxbus, root / "bus", "broker", *BROKER_OPTIONS, *_tcp(env, "bus"))
    if pubsub:
        if "zmq" in chosen:
            (root / "zmq").mkdir()
            env.wirings["zmq"] = peers.zmq_direct_wiring(root / "zmq", env.transport)
        if "zmq.proxy" in chosen:
            (root / "proxy").mkdir()
            start("zmq.proxy", peers.start_zmq_proxy, root / "proxy", env.transport)
    if "sessions" in scenarios:
        if peers.pryxbus_has("session-service"):
            home = root / "ses"
            start("pryxbus.sessions", peers.start_pryxbus, home, "broker", *_tcp(env, "ses"))
            if "pryxbus.sessions" in env.wirings:
                start("pryxbus.sessions", peers.start_pryxbus, home, "session-service", *_tcp(env, "ses"))
        else:
            skipped["pryxbus.sessions"] = "this checkout has no `pryxbus session-service` yet"
        if "zmq.reqrep" in chosen:
            (root / "echo").mkdir()
            start("zmq.reqrep", peers.start_reqrep_echo, root / "echo", env.transport)
        if "sqlite" in chosen:
            env.wirings["sqlite"] = {"kind": "sqlite"}
        if "sidecar" in chosen:
            (root / "sidecar").mkdir()
            start("sidecar", peers.start_sidecar, root / "sidecar", env.transport)
    if "eventlog" in scenarios or "transform" in scenarios or "confirmed" in scenarios:
        if peers.pryxbus_has("event-log"):
            home = root / "log"
            start("pryxbus.log", peers.start_pryxbus, home, "broker", *BROKER_OPTIONS, *_tcp(env, "log"))
            if "pryxbus.log" in env.wirings:
                start("pryxbus.log", peers.start_pryxbus, home, "event-log", *_tcp(env, "log"))
        else:
            skipped["pryxbus.log"] = "this checkout has no `pryxbus event-log` yet"
    if "confirmed" in scenarios and "nats" in chosen:
        binary = peers.find_jetstream()
        if binary is None:
            skipped["nats.js"] = f"no nats-server with JetStream (2.10+) found; {peers.INSTALL_HINT}"
            progress.note(f"skipping nats.js: {skipped['nats.js']}")
        else:
            (root / "nats.js").mkdir()
            start("nats.js", peers.start_nats, root / "nats.js", binary, True)
    external = {p for p in ("redis", "nats") if p in chosen and (pubsub or (p == "redis" and "sessions" in scenarios))}
    for name, avail in peers.discover(external).items():
        if not avail.ok:
            skipped[name] = avail.reason
            progress.note(f"skipping {name}: {avail.reason}")
            continue
        env.shared.setdefault("versions", {})[name] = avail.version
        (root / name).mkdir()
        start(name, peers.start_redis if name == "redis" else peers.start_nats, root / name)
    return skipped


def _tcp(env: Env, _name: str) -> list[str]:
    if env.transport != "tcp":
        return []
    port = peers.free_port()
    return ["--tcp", f"127.0.0.1:{port}"]


def _server_key(case: Case, system: str) -> str:
    """Which started servers (``env.wirings`` key) ``system`` needs for ``case``."""
    if system != "pryxbus" and case.scenario != "confirmed":
        return system
    if case.scenario == "confirmed":
        return "pryxbus.log" if system == "pryxbus" else "nats.js"
    if (case.scenario == "eventlog" and "log off" not in case.name) or case.scenario == "transform":
        return "pryxbus.log"
    return "pryxbus.sessions" if case.scenario == "sessions" else "pryxbus"


def _available(case: Case, system: str, env: Env) -> str | None:
    """None if ``system`` can run ``case`` now, else why not."""
    need = _server_key(case, system)
    if need in env.wirings:
        return None
    default = f"{need} not running" if system == "pryxbus" else "not selected (--peers)"
    return env.shared["skipped"].get(need, default)


def dead_server(case: Case, system: str, env: Env) -> str | None:
    """Why ``case`` cannot run on ``system`` any more (a server it needs has exited), else None."""
    for server in env.shared.get("servers", {}).get(_server_key(case, system), []):
        if not server.alive():
            return f"{server.name} (pid {server.pid}) exited with {server.process.returncode}: {server.tail()}"
    return None


def run(args: argparse.Namespace) -> int:
    scenarios = select_scenarios(args.scenario)
    chosen = select_peers(args.peers)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)
    out = Path(args.out)
    prepare_out(out)
    started = datetime.now(timezone.utc)
    workdir = Path(tempfile.mkdtemp(prefix="pxb-bench-", dir="/tmp"))  # short: ipc paths < 107 bytes
    env = Env(quick=quick, workdir=workdir, transport=args.transport)
    cases = [c for name in scenarios for c in _cases_of(name, env)]
    progress = Progress(total=0)
    measurements: dict[tuple[str, str, str, str], Measurement] = {}
    histograms: dict[str, dict[str, Histogram]] = {}
    previous_term = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    interrupted = False
    try:
        with ExitStack() as stack:
            progress.show("starting servers")
            env.shared["skipped"] = start_servers(env, scenarios, chosen, stack, progress)
            for key in ("pryxbus.sessions", "pryxbus.log"):
                if key in env.shared["skipped"] and key not in env.wirings:
                    progress.note(f"skipping {key}: {env.shared['skipped'][key]}")
            plan = [(c, s) for c in cases for s in c.systems if s == "pryxbus" or s in chosen]
            progress.total = len(plan) * repeats
            failed: set[tuple[str, str, str]] = set()
            for rep in range(repeats):
                for case, system in plan:
                    key = (case.scenario, case.name, system)
                    reason = _available(case, system, env)
                    if reason is not None or key in failed:
                        for mt in case.metrics:
                            m = _measurement(measurements, case, system, mt)
                            if reason is not None:
                                m.skipped = reason
                        progress.done += 1
                        continue
                    progress.show(f"{case.scenario} · {case.name} · {system} · run {rep + 1}/{repeats}")
                    dead = dead_server(case, system, env)
                    result = RunResult.failed(dead) if dead else _run_one(case, system, env)
                    progress.done += 1
                    for mt in case.metrics:
                        m = _measurement(measurements, case, system, mt)
                        if result.ok:
                            m.values.append(float(result.values[mt.key]))
                        else:
                            m.errors.append(f"run {rep + 1}: {result.error}")
                    if not result.ok:
                        failed.add(key)
                        progress.note(f"FAILED {case.scenario} · {case.name} · {system}: {result.error}")
                    for label, h in result.histograms.items():
                        merged = histograms.setdefault(system, {}).setdefault(label, Histogram())
                        merged.merge(Histogram.from_dict(h))
            progress.show("stopping servers")
        progress.finish()
    except KeyboardInterrupt:
        interrupted = True
        measured = any(m.values or m.errors for m in measurements.values())
        progress.note(
            "bench: interrupted; every server it started is stopped, "
            + (f"partial results ({progress.done} of {progress.total} runs) follow" if measured else "no results written")
        )
        if not measured:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        shutil.rmtree(workdir, ignore_errors=True)
    # Interrupted runs (Ctrl-C, SIGTERM) still write what they measured, marked as partial: a
    # figure there may rest on fewer runs than the report's header says a figure normally has.
    partial = f"{progress.done} of {progress.total} runs" if interrupted else None
    code = _report(out, env, measurements, histograms, started, repeats, partial)
    return 130 if interrupted else code


def _report(
    out: Path,
    env: Env,
    measurements: dict[tuple[str, str, str, str], Measurement],
    histograms: dict[str, dict[str, Histogram]],
    started: datetime,
    repeats: int,
    partial: str | None,
) -> int:
    """Write results.json, report.md and the charts to ``out``, print the report; the exit code.

    ``partial`` says how far an interrupted run got (None for a whole run).
    """
    finished = datetime.now(timezone.utc)
    ms = list(measurements.values())
    systems = [s for s in ORDER if any(m.system == s for m in ms)]
    info = machine(env.shared.get("versions", {}))
    targets = evaluate_targets(ms)
    skipped = env.shared.get("skipped", {})
    doc = {
        "schema": SCHEMA_VERSION,
        "command": " ".join(["pryxbus", "bench", *_given_args()]),
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "duration_s": round((finished - started).total_seconds(), 1),
        "quick": env.quick,
        "repeats": repeats,
        "interrupted": partial,
        "transport": env.transport,
        "broker_options": list(BROKER_OPTIONS),
        "machine": info,
        "systems": {s: {"skipped": r} for s, r in skipped.items()} | {s: {"skipped": None} for s in systems},
        "measurements": [m.to_dict() for m in ms],
        "histograms": {s: {k: h.to_dict() for k, h in per.items()} for s, per in histograms.items()},
        "targets": targets,
    }
    write_json(out / "results.json", doc)
    text = (
        machine_lines(info)
        + (f"INTERRUPTED after {partial}: partial results, some figures from fewer runs\n" if partial else "")
        + f"{'quick' if env.quick else 'full'} run, {repeats} runs per figure (median ±half-range);"
        f" (N×) = pryxbus ÷ that system, same run; {doc['duration_s']:.0f}s\n"
        + f"pryxbus broker: {' '.join(BROKER_OPTIONS)} (queues that hold what a publisher sends ahead"
        " of its subscriber, as the peers' do; operations.md \"Memory\" has the defaults' price)\n\n"
        + table(ms, systems)
        + "\n"
        + targets_table(targets)
    )
    (out / "report.md").write_text(text)
    pictures = charts(out, ms, histograms, systems)
    for stale in set(CHARTS) - {Path(p).name for p in pictures}:  # an earlier run's, not this one's
        (out / stale).unlink(missing_ok=True)
    sys.stdout.write(text)
    if not pictures:
        sys.stdout.write("no charts: matplotlib is missing; install the peers with `make bench-peers`\n")
    sys.stdout.write(f"\nwrote {out / 'results.json'}, {out / 'report.md'}" + "".join(f", {p}" for p in pictures) + "\n")
    return 1 if any(m.status == "failed" for m in ms) else 0


def _given_args() -> list[str]:
    """The options this run was given, whether through ``pryxbus bench`` or ``python -m bench``."""
    given = sys.argv[1:]
    return given[1:] if given[:1] == ["bench"] else given


def _cases_of(name: str, env: Env) -> list[Case]:
    module, _ = SCENARIOS[name]
    return [c for c in module.cases(env) if c.scenario == name and not (env.quick and c.full_only)]


def _measurement(store: dict[tuple[str, str, str, str], Measurement], case: Case, system: str, mt: Any) -> Measurement:
    key = (case.scenario, case.name, system, mt.key)
    if key not in store:
        store[key] = Measurement(case.scenario, case.name, system, mt)
    return store[key]


def _run_one(case: Case, system: str, env: Env) -> RunResult:
    try:
        return case.run(system, env)
    except Exception as e:  # a harness bug in one case must not lose the other figures
        return RunResult.failed(f"{type(e).__name__}: {e}")


__all__ = ["PUBSUB", "run"]
