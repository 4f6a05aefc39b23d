"""The pure parts of the open-loop load generator (bench/loadgen.py): the schedule of intended
start times, latency counted from the intended start (no coordinated omission), drops beyond
the in-flight bound, warm-up left out, per-second buckets, histogram percentiles and merges.
Time is a fake clock: nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence

import grpc
import pytest

from bench.loadgen import (
    DROPPED,
    Histogram,
    LoadResult,
    RecommendScenario,
    degradation_flags,
    intended_offsets,
    run_open_loop,
    status_name,
)
from recsys.v1 import recommend_service_pb2
from recsys_client import RecsysClientError


class FakeClock:
    """A clock that only moves when the generator sleeps (to the end of the sleep, never
    backwards) or when a call says it took time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.on_sleep_to: list[tuple[float, asyncio.Event]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        target = self.now + delay
        for when, event in self.on_sleep_to:
            if target >= when:
                event.set()
        await asyncio.sleep(0)  # the calls already sent run first
        self.now = max(self.now, target)


def test_constant_arrivals_are_evenly_spaced() -> None:
    assert intended_offsets(4, 1.0) == [0.0, 0.25, 0.5, 0.75]
    assert len(intended_offsets(50, 3.0)) == 150


def test_poisson_arrivals_come_from_the_seed() -> None:
    first = intended_offsets(100, 10.0, arrival="poisson", seed=3)
    assert first == intended_offsets(100, 10.0, arrival="poisson", seed=3)
    assert first != intended_offsets(100, 10.0, arrival="poisson", seed=4)
    assert first == sorted(first)
    assert first[0] > 0
    assert first[-1] < 10.0
    assert 900 < len(first) < 1100  # 1000 expected; a seeded draw, so always the same count


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        intended_offsets(0, 1.0)


def test_histogram_percentiles_are_within_one_percent() -> None:
    generator = random.Random(1)
    samples = [generator.lognormvariate(-4, 1) for _ in range(5000)]
    histogram = Histogram()
    for sample in samples:
        histogram.record(sample)
    ordered = sorted(samples)
    for fraction in (0.5, 0.9, 0.99):
        exact = ordered[int(fraction * len(ordered)) - 1]
        assert histogram.percentile(fraction) == pytest.approx(exact, rel=0.011)
    assert histogram.percentile(1.0) == max(samples)
    assert Histogram().percentile(0.99) == 0.0


def test_merged_histograms_equal_one_histogram_of_every_sample() -> None:
    generator = random.Random(2)
    samples = [generator.uniform(0.001, 0.3) for _ in range(3000)]
    whole, first, second = Histogram(), Histogram(), Histogram()
    for index, sample in enumerate(samples):
        whole.record(sample)
        (first if index % 3 else second).record(sample)
    first.merge(Histogram.from_dict(json.loads(json.dumps(second.to_dict()))))
    assert first.counts == whole.counts
    assert first.total == whole.total == 3000
    for fraction in (0.5, 0.99):
        assert first.percentile(fraction) == whole.percentile(fraction)


def test_results_are_bucketed_by_intended_second() -> None:
    result = LoadResult(10, 3)
    result.record(0.2, 0.010, "OK", ["served_from_cache"])
    result.record(0.9, 0.030, "OK")
    result.record(1.1, 0.500, "UNAVAILABLE", ["ignored_on_errors"])
    result.record(2.5, 0.020, "OK", ["default_features"])
    result.record_drop(2.7)
    buckets = {row["second"]: row for row in result.per_second()}
    assert buckets[0]["successes"] == 2
    assert buckets[0]["degraded"] == {"served_from_cache": 1}
    assert buckets[1] == {
        "second": 1, "successes": 0, "errors": {"UNAVAILABLE": 1}, "degraded": {},
        "p50_ms": 0.0, "p99_ms": 0.0,
    }  # fmt: skip
    assert buckets[2]["errors"] == {DROPPED: 1}
    summary = result.summary()
    assert summary["successes"] == 3
    assert summary["errors"] == {"UNAVAILABLE": 1}  # a drop is not a server error
    assert summary["dropped_by_generator"] == 1
    assert summary["degraded"] == {"default_features": 1, "served_from_cache": 1}
    assert result.error_count == 2
    assert summary["max_ms"] == 30.0  # only successful answers are in the latency


def test_results_of_two_generators_merge() -> None:
    first, second = LoadResult(5, 2), LoadResult(5, 2)
    first.scheduled, second.scheduled = 3, 2
    first.record(0.1, 0.010, "OK")
    first.record(1.1, 0.040, "OK")
    first.record(1.5, 0.040, "DEADLINE_EXCEEDED")
    second.record(0.3, 0.020, "OK", ["cold_start"])
    second.record_drop(1.9)
    first.client_cpu_s, second.client_cpu_s = 0.5, 0.25
    first.server_cpu_s, second.server_cpu_s = 1.0, 1.25
    first.merge(LoadResult.from_dict(json.loads(json.dumps(second.to_dict()))))
    summary = first.summary()
    assert summary["offered_rps"] == 10
    assert summary["scheduled"] == 5
    assert summary["successes"] == 3
    assert summary["errors"] == {"DEADLINE_EXCEEDED": 1}
    assert summary["dropped_by_generator"] == 1
    assert summary["degraded"] == {"cold_start": 1}
    assert first.client_cpu_s == 0.75  # two clients' CPU adds up
    assert first.server_cpu_s == 1.25  # the same server read twice: not added
    assert [row["successes"] for row in first.per_second()] == [2, 1]


async def test_latency_counts_from_the_intended_start_when_the_loop_stalls() -> None:
    """The first call stalls everything for a second (as a blocked event loop or a stalled
    server would): the nine requests due meanwhile are sent late, and each is measured from
    when it was due, not from when it was sent (a closed loop would report them as fast)."""
    clock = FakeClock()
    numbers: list[int] = []

    async def call(number: int) -> Sequence[str]:
        numbers.append(number)
        if number == 0:
            clock.now += 1.0
        return ["served_from_cache"]

    result = await run_open_loop(call, 10, 1.0, clock=clock, sleep=clock.sleep)
    assert numbers == list(range(10))
    assert result.successes == result.scheduled == 10
    assert result.latency.maximum == pytest.approx(1.0)
    assert result.latency.percentile(0.5) == pytest.approx(0.5, rel=0.011)
    assert result.latency.percentile(0.1) == pytest.approx(0.1, rel=0.011)
    assert result.send_lag.maximum == pytest.approx(0.9)  # the generator was late, and says so
    assert result.degraded == {"served_from_cache": 10}
    assert result.window_s == pytest.approx(1.0)


async def test_requests_beyond_the_in_flight_bound_are_dropped_not_queued() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    clock.on_sleep_to.append((clock.now + 1.0, gate))  # answers come at the end of the run
    started: list[int] = []

    async def call(number: int) -> Sequence[str]:
        started.append(number)
        await gate.wait()
        return []

    result = await run_open_loop(call, 10, 1.0, max_outstanding=2, clock=clock, sleep=clock.sleep)
    assert started == [0, 1]
    assert result.scheduled == 10
    assert result.successes == 2
    assert result.dropped == 8
    assert result.per_second()[0]["errors"] == {DROPPED: 8}


async def test_the_warm_up_is_sent_but_left_out_and_numbers_interleave() -> None:
    clock = FakeClock()
    numbers: list[int] = []

    async def call(number: int) -> Sequence[str]:
        numbers.append(number)
        if number >= 13:
            raise RecsysClientError(grpc.StatusCode.UNAVAILABLE, "shed")
        return []

    result = await run_open_loop(
        call, 10, 0.5, warmup_s=0.5, first_number=3, number_stride=2,
        clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    assert numbers == [3, 5, 7, 9, 11, 13, 15, 17, 19, 21]
    assert result.scheduled == 5  # the measured half only
    assert result.successes == 0
    assert result.errors == {"UNAVAILABLE": 5}  # 13.. fall in the measured half
    assert [row["second"] for row in result.per_second()] == [0]


def test_failed_calls_are_named_by_status_code() -> None:
    assert status_name(RecsysClientError(grpc.StatusCode.RESOURCE_EXHAUSTED, "x")) == (
        "RESOURCE_EXHAUSTED"
    )
    assert status_name(TimeoutError()) == "DEADLINE_EXCEEDED"
    assert status_name(ConnectionResetError()) == "ConnectionResetError"


def test_degradation_flags_of_a_response() -> None:
    response = recommend_service_pb2.RecommendResponse(cold_start=True)
    response.degradation.partial_retrieval = True
    response.degradation.failed_shard_ids.extend([3, 4])
    response.degradation.served_from_cache = True
    assert sorted(degradation_flags(response)) == [
        "cold_start", "partial_retrieval", "served_from_cache",
    ]  # fmt: skip
    assert degradation_flags(recommend_service_pb2.RecommendResponse()) == []


def test_scenarios_pick_users_deterministically() -> None:
    full = RecommendScenario("full_path", cached_users=10, fresh_start=10, fresh_users=1000)
    assert len({full.user(number) for number in range(1000)}) == 1000  # never the same twice
    assert full.user(0) == "user10"
    assert RecommendScenario("cache_hit", cached_users=10).user(23) == "user3"
    cold = RecommendScenario("cold_start", run_id="r1")
    assert cold.user(7) == "cold-r1-7"
    mixed = RecommendScenario("mixed", cached_users=10, fresh_start=10, seed=5)
    kinds = [mixed.kind(number) for number in range(10_000)]
    assert kinds == [mixed.kind(number) for number in range(10_000)]
    assert kinds.count("cache_hit") == pytest.approx(7000, abs=300)
    assert kinds.count("full_path") == pytest.approx(2500, abs=300)
    assert kinds.count("cold_start") == pytest.approx(500, abs=150)
    with pytest.raises(ValueError, match="unknown scenario"):
        RecommendScenario("burst").user(1)


async def test_a_real_server_answers_every_request_and_a_missing_one_counts_unavailable() -> None:
    """Over gRPC on loopback (port 0): an echo server answers all of a short run; with the
    server gone every call is counted by its status code, none raises out of the generator."""
    from google.protobuf import wrappers_pb2

    from bench.load import ECHO_SERVICE, _echo_handler

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    echo = channel.unary_unary(
        f"/{ECHO_SERVICE}/Echo",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )

    async def call(number: int) -> Sequence[str]:
        await echo(wrappers_pb2.StringValue(value=str(number)), timeout=5)
        return []

    try:
        answered = await run_open_loop(call, 40, 0.5, warmup_s=0.1)
        await server.stop(None)
        refused = await run_open_loop(call, 40, 0.25)
    finally:
        await channel.close()
        await server.stop(None)
    assert answered.successes == answered.scheduled == 20
    assert answered.error_count == 0
    assert refused.successes == 0
    assert refused.errors == {"UNAVAILABLE": refused.scheduled}
