"""`make drills` (`python -m drills.run`): starts the distributed layout on its own stores,
runs every drill one fault at a time under steady open-loop load, then the disaster-recovery
drill on a fresh deployment, prints the tables and writes them to docs/drills.md (with the
raw figures in docs/drills.json). Exit status 1 when any drill misses its criterion.

DRILLS_ONLY=name,name runs a subset (names as in DRILLS below); DRILLS_FOLDER keeps the work
folder (default: a temporary one under var/drills, removed afterwards unless it failed)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform as machine
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from drills import events, services, snapshots, stores
from drills.platform import Platform, say
from drills.report import DrillResult, drill_section, summary_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "drills.md"
RESULTS = ROOT / "docs" / "drills.json"

DRILLS: list[tuple[str, Callable[[Platform], DrillResult]]] = [
    ("shard", services.kill_shard),
    ("retrieve", services.kill_retrieve),
    ("rank", services.kill_rank),
    ("model_server", services.stop_model_server),
    ("redis_kill", stores.redis_killed),
    ("redis_freeze", stores.redis_frozen),
    ("table_lock", stores.table_lock),
    ("postgres_failover", stores.primary_failure),
    ("rolling_restart", services.rolling_restart),
    ("corrupted_snapshot", snapshots.corrupted_snapshot),
    ("rewritten_manifest", snapshots.rewritten_manifest),
    ("overload", services.overload),
    ("consumer_kills", events.consumer_kills),
    ("poison", events.poison_event),
]


def _selected() -> set[str]:
    only = os.environ.get("DRILLS_ONLY", "")
    names = {name.strip() for name in only.split(",") if name.strip()}
    known = {name for name, _ in DRILLS} | {"disaster_recovery"}
    if unknown := names - known:
        raise SystemExit(f"unknown drills {sorted(unknown)}; known: {sorted(known)}")
    return names or known


def write_docs(results: list[DrillResult], started: dt.datetime, seconds: float) -> None:
    passed = sum(result.passed for result in results)
    header = [
        "# Drills",
        "",
        "Written by `make drills` (`python -m drills.run`, drills/); do not edit by hand. "
        "Each drill breaks the running platform in one way while the open-loop load "
        "generator offers a steady rate, and reads what clients saw, second by second. See "
        "[operations.md](operations.md) for the runbooks and [backup.md](backup.md) for "
        "backup and restore.",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {machine.node() or 'this machine'} "
        f"({os.cpu_count()} cores), {seconds / 60:.1f} min in all: "
        f"**{passed} of {len(results)} drills passed**.",
        "",
        "The layout: `recsys up` with 10 shard processes, Retrieve, Rank, two Recommend "
        "replicas on one port, the local Kafka broker and the consumer; its own Redis, its own "
        "PostgreSQL primary with a streaming replica (the database URL names both hosts, "
        "`target_session_attrs=read-write`), MLServer serving the trained ranker through "
        "the Triton backend. The catalogue is the sample deployment's (synthetic, "
        "3,000 items, 1,000 users). Load: known users, response cache TTL 1 s (so the "
        "pipeline runs), 2 s deadline, no client retries unless a drill says so.",
        "",
        "Columns: *client errors* are failed calls as the load generator saw them; "
        "*degraded share* the answered calls carrying any degradation flag over the whole "
        "window (before and after the fault included); *time to detect* from the fault to "
        "the end of the first second showing it (an upper bound); *time to recover* from the "
        "repair (or the fault, for faults the platform heals itself) to the end of the last "
        "second showing it. Timelines have one-second resolution: seconds are counted by each "
        "request's intended start, from the load's actual start.",
        "",
        "## Summary",
        "",
        summary_table(results),
        "",
        "## Each drill",
        "",
    ]
    sections = [drill_section(result) for result in results]
    DOCS.write_text("\n".join(header) + "\n\n".join(sections) + "\n")
    RESULTS.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "seconds": round(seconds, 1),
                "cpus": os.cpu_count(),
                "results": [result.to_dict() for result in results],
            },
            indent=1,
        )
        + "\n"
    )


def _progress(folder: Path, result: DrillResult) -> None:
    """Each drill's result as it ends: its checks on stderr, its figures in the work folder."""
    checks = "; ".join(f"{'pass' if ok else 'FAIL'}: {what}" for what, ok in result.checks)
    say(f"  {checks}")
    with (folder / "progress.jsonl").open("a") as handle:
        handle.write(json.dumps(result.to_dict()) + "\n")


def _stop_on_sigterm(signal_number: int, frame: object) -> None:
    # As Ctrl-C: the platform's context manager stops every process it started.
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    selected = _selected()
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    keep = os.environ.get("DRILLS_FOLDER")
    folder = Path(keep) if keep else ROOT / "var" / "drills" / f"run-{started:%Y%m%dT%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"drills in {folder}")
    results: list[DrillResult] = []
    layout_drills = [(name, drill) for name, drill in DRILLS if name in selected]
    if layout_drills:
        platform = Platform(folder / "layout")
        try:
            with platform.running():
                for _, drill in layout_drills:
                    results.append(drill(platform))
                    _progress(folder, results[-1])
        except Exception as error:  # the environment failed: every drill not run fails
            say(f"the platform failed: {error!r}")
            reason = f"{type(error).__name__}: {error}"[:500]
            ran = len(results)
            stage = "the platform stopped cleanly" if ran == len(layout_drills) else "ran"
            for name, _ in layout_drills[ran:]:
                missed = DrillResult(name, "the drill runs", passed=False)
                missed.check(f"not run: the platform failed ({reason})", False)
                results.append(missed)
            if ran == len(layout_drills):
                teardown = DrillResult("platform teardown", stage, passed=False)
                teardown.check(reason, False)
                results.append(teardown)
    if "disaster_recovery" in selected:
        from drills import disaster_recovery

        results.append(disaster_recovery.run(folder / "disaster-recovery"))
        _progress(folder, results[-1])
    seconds = time.monotonic() - clock
    sys.stdout.write(summary_table(results) + "\n")
    if selected == {name for name, _ in DRILLS} | {"disaster_recovery"}:
        write_docs(results, started, seconds)
        say(f"wrote {DOCS.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    else:
        say("a subset ran (DRILLS_ONLY): docs/drills.md left as it was")
        for result in results:
            sys.stdout.write(drill_section(result) + "\n\n")
    passed = all(result.passed for result in results)
    count = sum(result.passed for result in results)
    say(f"{count} of {len(results)} drills passed in {seconds / 60:.1f} min")
    if passed and not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
