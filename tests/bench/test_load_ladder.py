"""The load benchmark's bookkeeping (bench/load.py): which step of a ladder counts as the
highest sustained load, how a row reads, request numbers that never repeat."""

from __future__ import annotations

from typing import Any

from bench.load import STEP_SECONDS, WARMUP_SECONDS, Numbers, best_step, row


def step(rate: float, p99: float, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "offered_rps": rate, "scheduled": 10, "successes": 10, "p50_ms": p99 / 4,
        "p99_ms": p99, "errors": {}, "dropped_by_generator": 0, "degraded": {},
        "server_cpu_cores": 0.5, "client_cpu_cores": 0.1,
    }  # fmt: skip
    return {**values, **overrides}


def test_the_best_step_is_the_highest_rate_answered_in_full_under_the_limit() -> None:
    steps = [
        step(10, 20),
        step(20, 30),
        step(40, 79.9),
        step(80, 120),  # over the limit
        step(160, 50, errors={"UNAVAILABLE": 1}, successes=9),  # an error
    ]
    best = best_step(steps)
    assert best is not None
    assert best["offered_rps"] == 40
    assert best_step([step(10, 20, dropped_by_generator=1)]) is None
    assert best_step([step(10, 20, successes=9)]) is None  # one answer missing


def test_a_row_names_the_sustained_load_or_none() -> None:
    sustained = row("embedded", "full_path", [step(10, 20), step(20, 90), step(40, 95)])
    assert sustained["max req/s with p99 < 80 ms"] == 10
    assert sustained["p99 ms"] == 20
    assert sustained["steps"] == "10:20 20:90 40:95"
    failed = row(
        "up", "cold_start",
        [step(10, 0, successes=0, errors={"DEADLINE_EXCEEDED": 6, "UNAVAILABLE": 4})],
    )  # fmt: skip
    assert failed["max req/s with p99 < 80 ms"] == "none"
    assert failed["p50 ms"] == failed["p99 ms"] == "-"  # no answer, no latency
    assert failed["errors (ladder)"] == "DEADLINE_EXCEEDED 6, UNAVAILABLE 4"
    assert failed["steps"] == "10:-"


def test_each_step_gets_request_numbers_no_other_step_used() -> None:
    numbers = Numbers()
    first = numbers.take(10)
    second = numbers.take(40)
    assert first == 0
    # A step of 10/s sends (warm-up + measured seconds) * 10 requests, numbered from `first`.
    seconds = WARMUP_SECONDS + STEP_SECONDS
    assert second >= first + 10 * seconds
    assert numbers.take(1) >= second + 40 * seconds
