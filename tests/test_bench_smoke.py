"""Smoke test of the bench: ``python -m bench --quick`` on pryxbus alone writes its table, JSON
and charts. No timing thresholds: it checks that figures exist and nothing failed."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from bench.results import check_document

REPO = Path(__file__).resolve().parent.parent


def test_quick_run_on_pryxbus_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--peers", "none", "--repeats", "1",
         "--scenario", "throughput", "--scenario", "latency", "--out", str(out)],
        capture_output=True, text=True, timeout=110, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert check_document(doc) == []
    got = {(m["scenario"], m["case"], m["metric"]): m for m in doc["measurements"]}
    assert {m["system"] for m in doc["measurements"]} == {"pryxbus"}
    assert {m["status"] for m in doc["measurements"]} == {"ok"}
    assert got[("throughput", "1→1, 64 B", "rate")]["median"] > 0
    assert got[("latency", "round trip, 64 B", "low_p99_9")]["median"] > 0
    assert "**throughput · 1→1, 64 B**" in proc.stdout and "| pryxbus (SDK, broker) |" in proc.stdout
    assert (out / "report.md").read_text() in proc.stdout
    assert "[" in proc.stderr  # the progress display
    if importlib.util.find_spec("matplotlib"):
        assert {p.name for p in out.glob("*.png")} == {"throughput.png", "latency.png"}
    else:
        assert "no charts: matplotlib is missing" in proc.stdout


def test_the_wakeups_probe_reports_every_floor_and_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.wakeups", "--count", "30", "--repeats", "1", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert float(rows["bare SQLite commit (WAL, FULL)"].split("|")[2].split()[0]) > 0
    for name in ("REQ/REP echo", "REQ/REP + the same commit (sidecar)"):
        placed, pinned = rows[name].split("|")[2:4]
        assert float(placed.split()[0]) > 0 and float(pinned.split()[0]) > 0
    assert "of a bare commit's rate" in rows["REQ/REP + the same commit (sidecar)"]
    assert list(tmp_path.iterdir()) == []  # every run's files are removed


def test_the_wakeups_probe_refuses_bad_arguments(tmp_path: Path) -> None:
    for args, said in ((["--count", "0"], "at least 1"), (["--dir", str(tmp_path / "nope")], "is not a directory")):
        proc = subprocess.run([sys.executable, "-m", "bench.wakeups", *args], capture_output=True, text=True,
                              timeout=30, cwd=REPO)
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
