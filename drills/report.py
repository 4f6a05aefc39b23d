"""What one drill found, and the markdown of docs/drills.md.

A drill measures what clients see while one fault is injected into the running platform: per
second successes, errors by status code, each degradation flag, p50/p99 (the open-loop
generator's buckets), and the times the fault took to show and to heal. Its criterion is
checked from those figures only: `passed` is never set by hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Second:
    """The requests intended to start within one second of a drill's timeline (offset from the
    fault, negative before it)."""

    offset: int
    successes: int
    errors: dict[str, int]
    degraded: dict[str, int]
    p50_ms: float
    p99_ms: float


@dataclass
class DrillResult:
    name: str
    # The criterion in words, as docs/drills.md states it.
    criterion: str
    passed: bool
    client_errors: int | None = None
    requests: int | None = None
    # Share of answered requests carrying any degradation flag, over the drill's window.
    degraded_share: float | None = None
    # Seconds from the fault to the first degraded or failed answer (None: never showed).
    time_to_detect_s: float | None = None
    # Seconds from the repair (or the fault, for faults that heal themselves) to the first
    # second after which every answer is whole again (None: not recovered in the window).
    time_to_recover_s: float | None = None
    # Criterion checks, each "what: measured (aim)" with its verdict.
    checks: list[tuple[str, bool]] = field(default_factory=list)
    # Anything else worth reading: which check caught what, the flags seen, ...
    notes: list[str] = field(default_factory=list)
    timeline: list[Second] = field(default_factory=list)
    # Extra tables (the DR checklist): each a title and rows of column -> value.
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    duration_s: float = 0.0

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, ok))
        return ok

    def settle(self) -> DrillResult:
        """passed = every check held (and there was at least one)."""
        self.passed = bool(self.checks) and all(ok for _, ok in self.checks)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "criterion": self.criterion,
            "passed": self.passed,
            "client_errors": self.client_errors,
            "requests": self.requests,
            "degraded_share": self.degraded_share,
            "time_to_detect_s": self.time_to_detect_s,
            "time_to_recover_s": self.time_to_recover_s,
            "checks": [{"check": what, "ok": ok} for what, ok in self.checks],
            "notes": self.notes,
            "timeline": [vars(second) for second in self.timeline],
            "tables": [{"title": title, "rows": rows} for title, rows in self.tables],
            "duration_s": round(self.duration_s, 1),
        }


def _figure(value: float | int | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value}{unit}"
    return f"{value:.{digits}f}{unit}"


def summary_table(results: list[DrillResult]) -> str:
    lines = [
        "| drill | requests | client errors | degraded share | time to detect | "
        "time to recover | criterion | result |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        share = None if result.degraded_share is None else 100 * result.degraded_share
        lines.append(
            f"| {result.name} | {_figure(result.requests)} | {_figure(result.client_errors)} | "
            f"{_figure(share, ' %')} | {_figure(result.time_to_detect_s, ' s')} | "
            f"{_figure(result.time_to_recover_s, ' s')} | {result.criterion} | "
            f"{'**pass**' if result.passed else '**FAIL**'} |"
        )
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows
    ]
    return lines


def drill_section(result: DrillResult) -> str:
    lines = [f"### {result.name}", "", f"Criterion: {result.criterion}.", ""]
    lines += [f"- {'pass' if ok else 'FAIL'}: {what}" for what, ok in result.checks]
    lines += [f"- {note}" for note in result.notes]
    for title, rows in result.tables:
        lines += ["", f"{title}:", "", *_table(rows)]
    if result.timeline:
        lines += ["", "Per second (offset from the fault):", ""]
        lines += [
            "| s | ok | errors | degraded | p50 ms | p99 ms |",
            "|---:|---:|---|---|---:|---:|",
        ]
        for second in result.timeline:
            errors = ", ".join(f"{code} {count}" for code, count in sorted(second.errors.items()))
            degraded = ", ".join(
                f"{flag} {count}" for flag, count in sorted(second.degraded.items())
            )
            lines.append(
                f"| {second.offset} | {second.successes} | {errors or '-'} | {degraded or '-'} | "
                f"{second.p50_ms:.1f} | {second.p99_ms:.1f} |"
            )
    return "\n".join(lines)
