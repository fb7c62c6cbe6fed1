"""The bench runner's handling of careless use: repeated scenarios, an unusable --out, a server that
dies mid-run, and a SIGTERM (every server it started is stopped, nothing is left behind)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peers
from bench.results import Case
from bench.runner import _dead_server, prepare_out, select_scenarios
from bench.scenarios.common import Env
from tests.conftest import REPO


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
    why = _dead_server(sessions, "pryxbus", env)
    assert why is not None and "exited with 7" in why and "something went badly wrong" in why
    throughput = Case("throughput", "1→1, 64 B", (), ("pryxbus",), lambda system, env: None)
    assert _dead_server(throughput, "pryxbus", env) is None  # another server, not started here


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


def test_sigterm_stops_every_server_and_removes_the_work_directory(tmp_path: Path) -> None:
    before = _bench_servers()
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--peers", "none", "--scenario", "sessions", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert bench.stderr is not None
        for line in bench.stderr:  # the progress display, one line per step when not a terminal
            if "sessions ·" in line:
                break
        running = {pid: workdir for pid, workdir in _bench_servers().items() if pid not in before}
        assert running, "the bench started no server"
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode != 0
    assert "interrupted" in err
    assert not set(_bench_servers()) & set(running)  # every one stopped, none orphaned
    assert not [d for d in set(running.values()) if Path(d).exists()]  # its work directory removed
    assert not (tmp_path / "results.json").exists()
