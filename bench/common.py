"""Shared helpers of the benchmarks: latency statistics, result files and the docs table."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        raise ValueError("no samples")

    def percentile(fraction: float) -> float:
        index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
        return ordered[index] * 1000

    return {
        "samples": len(ordered),
        "p50_ms": round(percentile(0.50), 4),
        "p90_ms": round(percentile(0.90), 4),
        "p99_ms": round(percentile(0.99), 4),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 4),
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2))
    return path


def render_docs() -> None:
    """Rewrites docs/benchmarks.md from every result file."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` from `bench/results/*.json`; do not edit by hand.",
        "Each table compares the platform with the raw library it wraps (the load table: with the",
        "generator's own ceiling against an empty server), measured in one run.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {data['title']}", "", data["description"], ""]
        rows = data["rows"]
        columns = list(rows[0])
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("| " + " | ".join("---" for _ in columns) + " |")
        for row in rows:
            lines.append("| " + " | ".join(str(row[column]) for column in columns) + " |")
        # Charts a benchmark drew (paths relative to docs/), shown under its table.
        for chart in data.get("charts", []):
            lines += ["", f"![{chart['title']}]({chart['path']})"]
        machine_info = data["machine"]
        lines += [
            "",
            f"Measured {machine_info['when']} on {machine_info['cpus']} CPUs, "
            f"Python {machine_info['python']}. {data.get('conclusion', '')}".rstrip(),
            "",
        ]
    DOC.write_text("\n".join(lines))
