"""The result schema: what one run of a case yields, how repeats aggregate, and ``results.json``.

A *case* (e.g. "throughput 1→1, 64 B") is measured for each *system* (pryxbus and its peers) several
times; each run yields named metric values or a failure. A *measurement* is one (case, system,
metric) with its runs, their median and their spread. Any failed run fails the measurement: a run
that lost events is reported FAILED, never as fast.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """A figure a case reports: ``key`` in run results, shown as ``label`` in ``unit``."""

    key: str
    label: str
    unit: str
    better: Better = "higher"


@dataclass
class RunResult:
    """One run of one case on one system."""

    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    """Set when the run failed: lost events, a side crashed, a timeout."""
    histograms: dict[str, Any] = field(default_factory=dict)
    """Latency histograms (``Histogram.to_dict()``) by name, for the distribution chart."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, error: str, **details: Any) -> RunResult:
        return cls(error=error, details=details)


@dataclass(frozen=True)
class Case:
    """One thing to measure on each system that can do it.

    ``run(system, env)`` does one run and returns a :class:`RunResult`; ``baseline`` names, for each
    metric, the peers pryxbus's ratio is taken against (all peers when empty).
    """

    scenario: str
    name: str
    metrics: tuple[Metric, ...]
    systems: tuple[str, ...]
    run: Callable[[str, Any], RunResult]
    note: str = ""
    full_only: bool = False
    """Left out of ``--quick`` (which must finish in under a minute on 2 cores)."""


@dataclass
class Measurement:
    """One metric of one case on one system, over its repeated runs."""

    scenario: str
    case: str
    system: str
    metric: Metric
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return "skipped"
        if self.errors:
            return "failed"
        return "ok" if self.values else "missing"

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values and not self.errors else None

    @property
    def spread_pct(self) -> float | None:
        """Half the min–max range as a percentage of the median (the ± shown in the table)."""
        m = self.median
        if m is None or len(self.values) < 2 or m == 0:
            return None
        return 100.0 * (max(self.values) - min(self.values)) / 2 / abs(m)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "case": self.case,
            "system": self.system,
            "metric": self.metric.key,
            "label": self.metric.label,
            "unit": self.metric.unit,
            "better": self.metric.better,
            "status": self.status,
            "runs": self.values,
            "median": self.median,
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "spread_pct": self.spread_pct,
            "errors": self.errors,
            "skipped": self.skipped,
        }


def ratio(ours: Measurement | None, theirs: Measurement | None) -> float | None:
    """pryxbus's figure divided by a peer's (both medians from the same run), or None."""
    if ours is None or theirs is None or ours.median is None or theirs.median in (None, 0):
        return None
    return ours.median / theirs.median


REQUIRED_KEYS = {"schema", "started", "finished", "duration_s", "quick", "machine", "systems", "measurements", "targets"}
MEASUREMENT_KEYS = {
    "scenario", "case", "system", "metric", "label", "unit", "better", "status",
    "runs", "median", "min", "max", "spread_pct", "errors", "skipped",
}


def check_document(doc: dict[str, Any]) -> list[str]:
    """Problems with a ``results.json`` document (empty when it follows the schema)."""
    problems = []
    missing = REQUIRED_KEYS - doc.keys()
    if missing:
        problems.append(f"missing keys {sorted(missing)}")
    if doc.get("schema") != SCHEMA_VERSION:
        problems.append(f"schema {doc.get('schema')!r} != {SCHEMA_VERSION}")
    for i, m in enumerate(doc.get("measurements", [])):
        gap = MEASUREMENT_KEYS - m.keys()
        if gap:
            problems.append(f"measurement {i} lacks {sorted(gap)}")
        elif m["status"] == "ok" and m["median"] is None:
            problems.append(f"measurement {i} is ok without a median")
        elif m["status"] == "failed" and not m["errors"]:
            problems.append(f"measurement {i} failed without an error")
    return problems
