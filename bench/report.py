"""The bench's output: the machine described, a Markdown table with ratios, targets, JSON and charts.

Every ratio is pryxbus's median divided by a peer's median *from the same run*. The table marks
failed measurements FAILED (a run that lost events is never shown as a figure).
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.histogram import Histogram
from bench.peers import REPO, module_version
from bench.results import Measurement, ratio

SYSTEM_LABELS = {
    "pryxbus": "pryxbus (SDK, broker)",
    "zmq": "pyzmq PUB→SUB, no broker",
    "zmq.proxy": "pyzmq via zmq.proxy",
    "redis": "Redis (redis-py+hiredis)",
    "nats": "NATS (nats-py)",
    "zmq.reqrep": "pyzmq REQ/REP echo",
    "sqlite": "SQLite commit (WAL, FULL)",
    "sidecar": "REQ/REP + SQLite commit",
}


def machine(versions: dict[str, str]) -> dict[str, Any]:
    """CPU, cores, memory, OS, and the versions of everything measured."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        pass
    import zmq

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_mb": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": module_version("msgpack") or "?",
        "sqlite": sqlite3.sqlite_version,
        "pryxbus_commit": commit,
        **versions,
    }


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "µs":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _cell(m: Measurement, ours: Measurement | None) -> str:
    if m.status == "failed":
        return "FAILED"
    if m.status == "skipped":
        return "skipped"
    text = fmt(m.median, m.metric.unit)
    if m.spread_pct is not None:
        text += f" ±{m.spread_pct:.0f}%"
    if m.system != "pryxbus":
        r = ratio(ours, m)
        if r is not None:
            text += f" ({r:.2f}×)"
    return text


def table(measurements: list[Measurement], systems: list[str]) -> str:
    """Markdown: one table per case, systems as rows, metrics as columns, peers with pryxbus ÷ peer."""
    cases: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        cases.setdefault((m.scenario, m.case), []).append(m)
    lines = []
    for (scenario, case), ms in cases.items():
        metrics = list(dict.fromkeys(m.metric for m in ms))
        by = {(m.system, m.metric.key): m for m in ms}
        header = ["system"] + [f"{mt.label} ({mt.unit}{', lower is better' if mt.better == 'lower' else ''})" for mt in metrics]
        lines.append(f"**{scenario} · {case}**")
        lines.append("")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for system in [s for s in systems if any(m.system == s for m in ms)]:
            row = [SYSTEM_LABELS.get(system, system)]
            for mt in metrics:
                m = by.get((system, mt.key))
                row.append(_cell(m, by.get(("pryxbus", mt.key))) if m else "—")
            lines.append("| " + " | ".join(row) + " |")
        errors = sorted({f"{m.system}: {e}" for m in ms for e in m.errors})
        for e in errors[:6]:
            lines.append(f"\nFAILED {e}")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """A speed target from the issues: ``ours`` ÷ ``theirs`` (or ``ours`` alone) against ``threshold``."""

    issue: int
    text: str
    ours: tuple[str, str, str, str]
    """(scenario, case, system, metric)."""
    theirs: tuple[str, str, str, str] | None
    threshold: float
    op: str = ">="


TARGETS = (
    Target(2, "1→1 throughput ≥ 1.0× pyzmq PUB→SUB without a broker (64 B)",
           ("throughput", "1→1, 64 B", "pryxbus", "rate"), ("throughput", "1→1, 64 B", "zmq", "rate"), 1.0),
    Target(2, "1→4 fan-out ≥ 0.7× the same through zmq.proxy (total)",
           ("fanout", "1→4, 64 B", "pryxbus", "total"), ("fanout", "1→4, 64 B", "zmq.proxy", "total"), 0.7),
    Target(2, "round-trip p50 ≤ 1.25× zmq.proxy (at 1k/s)",
           ("latency", "round trip, 64 B", "pryxbus", "low_p50"), ("latency", "round trip, 64 B", "zmq.proxy", "low_p50"), 1.25, "<="),
    Target(3, "session get, 1 client ≥ 0.8× bare REQ/REP echo",
           ("sessions", "get, 1 client", "pryxbus", "ops"), ("sessions", "get, 1 client", "zmq.reqrep", "ops"), 0.8),
    Target(3, "durable create, 1 client ≥ 0.5× bare SQLite commits",
           ("sessions", "create, 1 client", "pryxbus", "ops"), ("sessions", "create, 1 client", "sqlite", "ops"), 0.5),
    Target(3, "durable create, 4 clients > 1 client",
           ("sessions", "create, 4 clients", "pryxbus", "ops"), ("sessions", "create, 1 client", "pryxbus", "ops"), 1.0, ">"),
    Target(4, "bus throughput with the event log on ≥ 0.8× off",
           ("eventlog", "1→1, 64 B, log on", "pryxbus", "rate"), ("eventlog", "1→1, 64 B, log off", "pryxbus", "rate"), 0.8),
    Target(4, "replay from a warm log ≥ 200k events/s",
           ("eventlog", "replay, warm log", "pryxbus", "replay"), None, 200_000),
    Target(5, "1→1 throughput ≥ 1.3× NATS (64 B)",
           ("throughput", "1→1, 64 B", "pryxbus", "rate"), ("throughput", "1→1, 64 B", "nats", "rate"), 1.3),
    Target(5, "1→1 throughput ≥ 1.5× Redis pub/sub (64 B)",
           ("throughput", "1→1, 64 B", "pryxbus", "rate"), ("throughput", "1→1, 64 B", "redis", "rate"), 1.5),
    Target(18, "1→1 throughput ≥ 1.0× pyzmq PUB→SUB without a broker (1 KiB)",
           ("throughput", "1→1, 1 KiB", "pryxbus", "rate"), ("throughput", "1→1, 1 KiB", "zmq", "rate"), 1.0),
    Target(18, "1→1 throughput ≥ 0.9× pyzmq PUB→SUB without a broker (16 KiB)",
           ("throughput", "1→1, 16 KiB", "pryxbus", "rate"), ("throughput", "1→1, 16 KiB", "zmq", "rate"), 0.9),
    Target(18, "1→1 throughput ≥ 1.2× NATS (16 KiB)",
           ("throughput", "1→1, 16 KiB", "pryxbus", "rate"), ("throughput", "1→1, 16 KiB", "nats", "rate"), 1.2),
    Target(18, "batched 1→1 throughput ≥ 1,000,000 events/s (64 B)",
           ("throughput", "1→1, 64 B, batched", "pryxbus", "rate"), None, 1_000_000),
    Target(18, "batched 1→1 with the event log on ≥ 0.8× 1,000,000 events/s (64 B)",
           ("eventlog", "1→1, 64 B, batched, log on", "pryxbus", "rate"), None, 800_000),
    Target(18, "1→1 throughput ≥ 1.5× NATS (64 B)",
           ("throughput", "1→1, 64 B", "pryxbus", "rate"), ("throughput", "1→1, 64 B", "nats", "rate"), 1.5),
    Target(18, "1→1 throughput ≥ 2× Redis pub/sub (64 B)",
           ("throughput", "1→1, 64 B", "pryxbus", "rate"), ("throughput", "1→1, 64 B", "redis", "rate"), 2.0),
)


def evaluate_targets(measurements: Iterable[Measurement]) -> list[dict[str, Any]]:
    """Each target with its measured figure and ``met`` (None when a side was not measured)."""
    index = {(m.scenario, m.case, m.system, m.metric.key): m for m in measurements}
    out = []
    for t in TARGETS:
        ours = index.get(t.ours)
        theirs = index.get(t.theirs) if t.theirs else None
        if t.theirs is None:
            value = ours.median if ours else None
        else:
            value = ratio(ours, theirs)
        met = None
        if value is not None:
            met = {">=": value >= t.threshold, "<=": value <= t.threshold, ">": value > t.threshold}[t.op]
        reason = ""
        if value is None:
            missing = [k for k in (t.ours, t.theirs) if k and (index.get(k) is None or index[k].median is None)]
            reason = "not measured: " + ", ".join(
                f"{k[2]} {k[0]}/{k[1]} ({index[k].status if k in index else 'not run'})" for k in missing
            )
        out.append({"issue": t.issue, "target": t.text, "value": value, "absolute": t.theirs is None,
                    "threshold": t.threshold, "op": t.op, "met": met, "reason": reason})
    return out


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["**targets from the issues (ratios from this run)**", "", "| issue | target | measured | met |", "|---|---|---|---|"]
    for t in targets:
        if t["value"] is None:
            measured, met = t["reason"], "—"
        else:
            measured = fmt(t["value"], "events/s") + " events/s" if t["absolute"] else f"{t['value']:.2f}×"
            met = "yes" if t["met"] else "**no**"
        lines.append(f"| #{t['issue']} | {t['target']} | {measured} | {met} |")
    return "\n".join(lines) + "\n"


def machine_lines(info: dict[str, Any]) -> str:
    keys = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("cpu", "cores", "usable_cores", "memory_mb", "os"))
    return (
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable),"
        f" {info['memory_mb']} MB, {info['os']}\nversions: {keys}\n"
    )


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# -- charts --------------------------------------------------------------------------------


def charts(out: Path, measurements: list[Measurement], histograms: dict[str, dict[str, Histogram]], systems: list[str]) -> list[Path]:
    """throughput.png (bars, min–max whiskers), sessions.png, latency.png (percentile curves).

    Returns the files written; empty when matplotlib is missing (the caller says so).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    groups = {
        "throughput.png": [m for m in measurements if m.scenario in ("throughput", "fanout", "fanin", "isolation", "eventlog") and m.metric.better == "higher"],
        "sessions.png": [m for m in measurements if m.scenario == "sessions"],
    }
    colors = {s: plt.cm.tab10(i) for i, s in enumerate(systems)}
    for name, ms in groups.items():
        panels: dict[str, list[Measurement]] = {}
        for m in ms:
            panels.setdefault(f"{m.scenario}: {m.case}\n{m.metric.label} ({m.metric.unit})", []).append(m)
        if not panels:
            continue
        cols = min(3, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax, (title, pm) in zip(axes.flat, panels.items()):
            pm = [m for m in pm if m.median is not None]
            xs = range(len(pm))
            meds = [m.median for m in pm]
            lo = [m.median - min(m.values) for m in pm]
            hi = [max(m.values) - m.median for m in pm]
            ax.bar(xs, meds, yerr=[lo, hi], color=[colors.get(m.system) for m in pm], capsize=3)
            ax.set_xticks(list(xs), [m.system for m in pm], rotation=30, ha="right", fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 3))
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle("median of runs; whiskers: min–max", fontsize=9)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if histograms:
        labels = sorted({label for per in histograms.values() for label in per})
        fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 4.2), squeeze=False)
        for ax, label in zip(axes.flat, labels):
            for key, per in histograms.items():
                h = per.get(label)
                if h is None or h.count == 0:
                    continue
                pts = [(p, v) for p, v in h.distribution() if p < 100]
                ax.plot([1 / (1 - p / 100) for p, _ in pts], [v for _, v in pts], label=key, color=colors.get(key.split(" ")[0]))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([1, 2, 10, 100, 1000, 10000], ["0", "50", "90", "99", "99.9", "99.99"])
            ax.set_xlabel("percentile")
            ax.set_ylabel("latency (µs)")
            ax.set_title(label, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
