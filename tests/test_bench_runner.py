"""The bench runner's handling of careless use: repeated scenarios, an unusable --out, a server that
dies mid-run, and a SIGTERM (every server it started is stopped, nothing is left behind, and what
was measured before it is written, marked as partial)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peers
from bench.results import Case, check_document
from bench.runner import dead_server, prepare_out, select_scenarios
from bench.scenarios.common import Env
from tests.helpers import REPO
from tests.helpers import wait_for


def test_a_scenario_named_twice_runs_once() -> None:
    assert select_scenarios(["fanin", "sessions", "fanin"]) == ["fanin", "sessions"]


def test_an_unusable_out_is_refused_before_anything_runs(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub", Path("/proc/no-results-here")):
        with pytest.raises(SystemExit, match=f"bench: --out {out}: cannot write results there"):
            prepare_out(out)
    prepare_out(tmp_path / "new" / "nested")
    assert list((tmp_path / "new" / "nested").iterdir()) == []  # created, and the check left nothing


def test_cases_of_a_server_that_died_fail_with_its_exit_and_log(tmp_path: Path) -> None:
    log = tmp_path / "dead.log"
    log.write_text("starting\nsomething went badly wrong\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    process.wait(30)
    env = Env(quick=True, workdir=tmp_path)
    env.shared["servers"] = {"pryxbus.sessions": [peers.Server("pryxbus-session-service", process, log)]}
    sessions = Case("sessions", "get, 1 client", (), ("pryxbus",), lambda system, env: None)
    why = dead_server(sessions, "pryxbus", env)
    assert why is not None and "exited with 7" in why and "something went badly wrong" in why
    throughput = Case("throughput", "1→1, 64 B", (), ("pryxbus",), lambda system, env: None)
    assert dead_server(throughput, "pryxbus", env) is None  # another server, not started here


def _bench_servers() -> dict[int, str]:
    """Processes running in a bench work directory: pid -> that directory (/tmp/pxb-bench-*)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        workdir = re.search(r"/tmp/pxb-bench-[^/\x00]+", cmdline)
        if workdir:
            found[int(pid)] = workdir.group()
    return found


def _own_servers(bench: int, before: dict[int, str]) -> dict[int, str]:
    """The servers one bench run started: those in the work directory of its own children (another
    test's bench may run at the same time, in a directory of its own)."""
    servers = {pid: workdir for pid, workdir in _bench_servers().items() if pid not in before}
    own = {workdir for pid, workdir in servers.items() if pid in _children(bench)}
    return {pid: workdir for pid, workdir in servers.items() if workdir in own}


def _sessions_bench(out: Path, stdout: int = subprocess.PIPE) -> "subprocess.Popen[str]":
    """A quick bench of pryxbus's sessions alone, its progress display on a pipe (a line per step)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--peers", "none", "--scenario", "sessions", "--out", str(out)],
        stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


def test_sigterm_stops_every_server_and_removes_the_work_directory(tmp_path: Path) -> None:
    before = _bench_servers()
    bench = _sessions_bench(tmp_path)
    try:
        assert bench.stderr is not None
        for line in bench.stderr:  # the progress display, one line per step when not a terminal
            if "sessions ·" in line:
                break
        running = _own_servers(bench.pid, before)
        assert running, "the bench started no server"
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode != 0
    assert "interrupted" in err
    assert not _alive(set(running))  # every one stopped, none orphaned
    assert not [d for d in set(running.values()) if Path(d).exists()]  # its work directory removed
    assert not (tmp_path / "results.json").exists()


def test_an_interrupted_run_writes_what_it_measured_marked_partial(tmp_path: Path) -> None:
    before = _bench_servers()
    bench = _sessions_bench(tmp_path)
    try:
        assert bench.stderr is not None
        steps = 0
        for line in bench.stderr:
            if "sessions ·" in line:
                steps += 1
                if steps == 2:  # the first run has been measured: its progress line was followed
                    break
        assert steps == 2, "the bench ended before its second run"
        running = _own_servers(bench.pid, before)
        bench.send_signal(signal.SIGTERM)
        out, err = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130
    assert "partial results" in err
    assert not _alive(set(running))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert check_document(doc) == []
    assert doc["interrupted"] and doc["interrupted"].endswith("runs")
    first = [m for m in doc["measurements"] if m["case"] == "get, 1 client" and m["system"] == "pryxbus"]
    assert first and first[0]["status"] == "ok" and len(first[0]["runs"]) >= 1
    report = (tmp_path / "report.md").read_text()
    assert "INTERRUPTED after" in report and report in out


def _children(pid: int) -> set[int]:
    found = set()
    for child in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(child))
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def test_a_killed_runner_takes_its_sides_and_servers_with_it(tmp_path: Path) -> None:
    """kill -9 leaves the runner no chance to clean up: the kernel stops what it started."""
    before = _bench_servers()
    bench = _sessions_bench(tmp_path, stdout=subprocess.DEVNULL)
    workdirs: set[str] = set()
    try:
        assert bench.stderr is not None
        for line in bench.stderr:
            if "get, 4 clients" in line:  # four client sides are being started or are running
                break
        servers = {pid: d for pid, d in _bench_servers().items() if pid not in before}
        workdirs = set(servers.values())
        started = wait_for(lambda: _children(bench.pid), lambda pids: bool(pids - set(servers)), timeout=30,
                           what="a side process")
        bench.kill()
        bench.wait(30)
        wait_for(lambda: _alive(started | set(servers)), lambda alive: not alive, timeout=30, what="orphans to exit")
    finally:
        if bench.poll() is None:
            bench.kill()
        for d in workdirs:  # the one thing a killed runner cannot clean
            subprocess.run(["rm", "-rf", d], check=False)
