"""The drills' bookkeeping (drills/core.py, drills/report.py, drills/load.py): when a fault
showed and healed on the per-second timeline, the verdict from the checks alone, the flags an
answer counts under, and the markdown of docs/drills.md. The drills themselves run in
`make drills`, against the whole platform."""

from __future__ import annotations

from types import SimpleNamespace

from bench.loadgen import Histogram, LoadResult
from drills.core import Observed
from drills.load import flags_of
from drills.report import DrillResult, drill_section, summary_table
from recsys.v1 import recommend_service_pb2


def observed(
    seconds: dict[int, tuple[int, int, int]], fault_at: float, repair_at: float | None
) -> Observed:
    """`seconds`: second -> (answers, of them flagged "degraded", errors)."""
    result = LoadResult(10.0, float(len(seconds)))
    for second, (answers, flagged, errors) in seconds.items():
        for index in range(answers):
            result.record(second + 0.5, 0.01, "OK", ["degraded"] if index < flagged else [])
        for _ in range(errors):
            result.record(second + 0.5, 0.5, "UNAVAILABLE")
        result.scheduled += answers + errors
    return Observed(result, Histogram(), fault_at, repair_at, float(len(seconds)))


def test_detection_and_recovery_are_read_from_the_seconds_showing_the_fault() -> None:
    # The fault at 3.2 s shows from second 4, the repair at 6.0 s, the last flagged second 7.
    run = observed(
        {0: (10, 0, 0), 1: (10, 0, 0), 2: (10, 0, 0), 3: (10, 0, 0), 4: (10, 4, 0),
         5: (9, 9, 1), 6: (10, 3, 0), 7: (10, 1, 0), 8: (10, 0, 0), 9: (10, 0, 0),
         10: (10, 0, 0), 11: (10, 0, 0)},
        fault_at=3.2, repair_at=6.0,
    )  # fmt: skip
    assert run.detect("degraded") == 1.8  # the end of second 4: an upper bound
    assert run.recover("degraded") == 2.0  # the end of second 7, from the repair
    assert run.recover("degraded", since=run.fault_at) == 4.8
    assert run.share() == 17 / 119
    assert run.result.error_count == 1


def test_a_fault_still_showing_at_the_end_has_not_recovered() -> None:
    run = observed(
        {0: (10, 0, 0), 1: (10, 5, 0), 2: (10, 5, 0), 3: (10, 5, 0), 4: (10, 5, 0)},
        fault_at=1.0, repair_at=None,
    )  # fmt: skip
    assert run.recover("degraded") is None
    never = observed({0: (10, 0, 0), 1: (10, 0, 0), 2: (10, 0, 0)}, fault_at=1.0, repair_at=None)
    assert never.detect("degraded") is None
    assert never.recover("degraded") == 0.0


def test_the_verdict_comes_from_the_checks_only() -> None:
    result = DrillResult("x", "y", passed=True)
    assert not result.settle().passed  # no check, no pass
    result.check("one", True)
    assert result.settle().passed
    result.check("two", False)
    assert not result.settle().passed
    assert "FAIL: two" in drill_section(result)
    assert "**FAIL**" in summary_table([result])


def test_an_answer_counts_under_each_of_its_flags_and_degraded_unless_only_cached() -> None:
    response = recommend_service_pb2.RecommendResponse()
    response.degradation.partial_retrieval = True
    response.degradation.failed_shard_ids.append(3)
    response.ranking_backend = 2  # the CPU copy of the model
    assert flags_of(response) == ["partial_retrieval", "shard:3", "ranking:CPU_MODEL", "degraded"]
    cached = recommend_service_pb2.RecommendResponse()
    cached.degradation.served_from_cache = True
    assert flags_of(cached) == ["served_from_cache"]
    features = recommend_service_pb2.RecommendResponse(cold_start=True)
    assert flags_of(features) == ["cold_start", "features_missing", "degraded"]
    assert flags_of(SimpleNamespace(**{
        "degradation": recommend_service_pb2.Degradation(), "ranking_backend": 1,
        "cold_start": False,
    })) == []  # fmt: skip
