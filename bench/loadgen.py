"""An open-loop load generator: requests start at fixed intended times (a constant rate, or
Poisson arrivals from a seed) whatever the server does, as real traffic arrives.

Latency is measured from a request's *intended* start, not from when the generator managed to
send it, so a stalled server (or a stalled generator) shows in the percentiles instead of
silently spacing the requests out (no coordinated omission). At most `max_outstanding` requests
are in flight; a request due beyond that is counted as dropped by the generator, never queued.
A warm-up period runs the same schedule and is left out of every figure. Over the measured
window the generator reads its own CPU time and the server processes' (from /proc).

    result = await run_open_loop(call, rate_per_second=50, duration_s=15, warmup_s=3)
    result.summary()  # p50/p99, successes, errors by status code, degradations, CPU, drops

`call(number)` sends request `number` and returns the degradation flags raised by the answer
(an empty list when none); an exception is an error, counted by its gRPC status code name.
Results of several generator processes merge (`LoadResult.merge`): the latency histograms are
log-bucketed with 1 % relative width, so percentiles of the merged result are exact to 1 %.

CLI, against a running server: `python -m bench.loadgen --target 127.0.0.1:50051 --rate 50
--duration 15 --scenario full_path [--processes 2]` prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc

from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError

Call = Callable[[int], Awaitable[Sequence[str]]]
Arrival = Literal["constant", "poisson"]
DROPPED = "DROPPED_BY_GENERATOR"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Histogram:
    """Latencies in seconds, counted in logarithmic buckets of `PRECISION` relative width:
    mergeable across processes at a fixed size, percentiles within 1 % of the exact ones."""

    PRECISION = 0.01
    # The lower edge of bucket 0; anything faster is counted there (no latency is under 1 µs).
    MINIMUM_SECONDS = 1e-6

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total = 0
        self.maximum = 0.0

    @classmethod
    def _index(cls, seconds: float) -> int:
        if seconds <= cls.MINIMUM_SECONDS:
            return 0
        return math.ceil(math.log(seconds / cls.MINIMUM_SECONDS) / math.log1p(cls.PRECISION))

    def record(self, seconds: float) -> None:
        self.counts[self._index(seconds)] += 1
        self.total += 1
        self.maximum = max(self.maximum, seconds)

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)

    def percentile(self, fraction: float) -> float:
        """The smallest recorded latency that at least `fraction` of the samples do not exceed
        (the upper edge of its bucket, never above the largest sample); 0 with no samples."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(fraction * self.total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                upper = self.MINIMUM_SECONDS * (1 + self.PRECISION) ** index
                return min(upper, self.maximum)
        return self.maximum

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {str(k): v for k, v in sorted(self.counts.items())}, "max": self.maximum}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls()
        for index, count in data["counts"].items():
            histogram.counts[int(index)] = count
            histogram.total += count
        histogram.maximum = data["max"]
        return histogram


@dataclass
class Bucket:
    """What happened to the requests intended to start within one second of the window."""

    successes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    degraded: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)

    def merge(self, other: Bucket) -> None:
        self.successes += other.successes
        self.errors.update(other.errors)
        self.degraded.update(other.degraded)
        self.latency.merge(other.latency)


@dataclass
class LoadResult:
    offered_rate: float
    duration_s: float
    # Requests the schedule held in the measured window (sent or dropped).
    scheduled: int = 0
    successes: int = 0
    # By gRPC status code name; requests dropped by the generator are in `dropped`, not here.
    errors: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    # Answers that raised each degradation flag (served_from_cache, default_features, ...).
    degraded: Counter[str] = field(default_factory=Counter)
    # Successful answers, from the intended start to the answer.
    latency: Histogram = field(default_factory=Histogram)
    # How late the generator sent each request (its own overhead: near 0 unless it is the
    # bottleneck or its loop stalls).
    send_lag: Histogram = field(default_factory=Histogram)
    seconds: dict[int, Bucket] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    # Wall time over which the CPU figures were read.
    window_s: float = 0.0

    def record(
        self, offset_s: float, latency_s: float, code: str, flags: Iterable[str] = ()
    ) -> None:
        """One measured request: `offset_s` its intended start from the window's start."""
        bucket = self.seconds.setdefault(max(0, int(offset_s)), Bucket())
        if code == "OK":
            self.successes += 1
            bucket.successes += 1
            self.latency.record(latency_s)
            bucket.latency.record(latency_s)
            for flag in flags:
                self.degraded[flag] += 1
                bucket.degraded[flag] += 1
        else:
            self.errors[code] += 1
            bucket.errors[code] += 1

    def record_drop(self, offset_s: float) -> None:
        self.dropped += 1
        self.seconds.setdefault(max(0, int(offset_s)), Bucket()).errors[DROPPED] += 1

    def merge(self, other: LoadResult) -> None:
        """Adds another generator's result over the same window (rates add up; CPU of the
        clients adds up; the server's is read by each over the same processes: the larger)."""
        self.offered_rate += other.offered_rate
        self.scheduled += other.scheduled
        self.successes += other.successes
        self.errors.update(other.errors)
        self.dropped += other.dropped
        self.degraded.update(other.degraded)
        self.latency.merge(other.latency)
        self.send_lag.merge(other.send_lag)
        for second, bucket in other.seconds.items():
            self.seconds.setdefault(second, Bucket()).merge(bucket)
        self.client_cpu_s += other.client_cpu_s
        self.server_cpu_s = max(self.server_cpu_s, other.server_cpu_s)
        self.window_s = max(self.window_s, other.window_s)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values()) + self.dropped

    def summary(self) -> dict[str, Any]:
        window = self.window_s or self.duration_s
        return {
            "offered_rps": round(self.offered_rate, 2),
            "achieved_rps": round(self.successes / self.duration_s, 2),
            "scheduled": self.scheduled,
            "successes": self.successes,
            "p50_ms": round(self.latency.percentile(0.50) * 1000, 2),
            "p90_ms": round(self.latency.percentile(0.90) * 1000, 2),
            "p99_ms": round(self.latency.percentile(0.99) * 1000, 2),
            "max_ms": round(self.latency.maximum * 1000, 2),
            "errors": dict(sorted(self.errors.items())),
            "dropped_by_generator": self.dropped,
            "degraded": dict(sorted(self.degraded.items())),
            "send_lag_p99_ms": round(self.send_lag.percentile(0.99) * 1000, 2),
            # CPU seconds per wall second: 1.0 is one core busy.
            "client_cpu_cores": round(self.client_cpu_s / window, 3),
            "server_cpu_cores": round(self.server_cpu_s / window, 3),
        }

    def per_second(self) -> list[dict[str, Any]]:
        return [
            {
                "second": second,
                "successes": bucket.successes,
                "errors": dict(sorted(bucket.errors.items())),
                "degraded": dict(sorted(bucket.degraded.items())),
                "p50_ms": round(bucket.latency.percentile(0.50) * 1000, 2),
                "p99_ms": round(bucket.latency.percentile(0.99) * 1000, 2),
            }
            for second, bucket in sorted(self.seconds.items())
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "offered_rate": self.offered_rate,
            "duration_s": self.duration_s,
            "scheduled": self.scheduled,
            "dropped": self.dropped,
            "latency": self.latency.to_dict(),
            "send_lag": self.send_lag.to_dict(),
            "seconds": {
                str(second): {
                    "successes": bucket.successes,
                    "errors": dict(bucket.errors),
                    "degraded": dict(bucket.degraded),
                    "latency": bucket.latency.to_dict(),
                }
                for second, bucket in self.seconds.items()
            },
            "client_cpu_s": self.client_cpu_s,
            "server_cpu_s": self.server_cpu_s,
            "window_s": self.window_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        result = cls(data["offered_rate"], data["duration_s"])
        result.scheduled = data["scheduled"]
        result.dropped = data["dropped"]
        result.latency = Histogram.from_dict(data["latency"])
        result.send_lag = Histogram.from_dict(data["send_lag"])
        for second, bucket_data in data["seconds"].items():
            bucket = Bucket(
                bucket_data["successes"],
                Counter(bucket_data["errors"]),
                Counter(bucket_data["degraded"]),
                Histogram.from_dict(bucket_data["latency"]),
            )
            result.seconds[int(second)] = bucket
            result.successes += bucket.successes
            result.errors.update(bucket.errors)
            result.degraded.update(bucket.degraded)
        result.errors.pop(DROPPED, None)
        result.client_cpu_s = data["client_cpu_s"]
        result.server_cpu_s = data["server_cpu_s"]
        result.window_s = data["window_s"]
        return result


def intended_offsets(
    rate_per_second: float, seconds: float, *, arrival: Arrival = "constant", seed: int = 0
) -> list[float]:
    """Intended start times (seconds from the start) of the requests of `seconds` at the
    rate: evenly spaced, or Poisson arrivals (exponential gaps) drawn from `seed`."""
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    if arrival == "constant":
        return [number / rate_per_second for number in range(math.ceil(rate_per_second * seconds))]
    generator = random.Random(seed)
    offsets, now = [], generator.expovariate(rate_per_second)
    while now < seconds:
        offsets.append(now)
        now += generator.expovariate(rate_per_second)
    return offsets


def status_name(error: BaseException) -> str:
    """The gRPC status code name of a failed call (the generator's error classes)."""
    if isinstance(error, RecsysClientError):
        return str(error.code.name)
    if isinstance(error, grpc.aio.AioRpcError):
        return str(error.code().name)
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return type(error).__name__


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one process (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (which may hold spaces) start at the state, field 3.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(root: int) -> list[int]:
    """`root` and every process descending from it (a supervisor and its children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(text.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return sorted(tree)


def cpu_seconds(pids: Iterable[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


async def _one(
    call: Call,
    number: int,
    intended: float,
    offset_s: float,
    result: LoadResult | None,
    clock: Callable[[], float],
) -> None:
    try:
        flags = await call(number)
        code = "OK"
    except Exception as error:  # every failure is an outcome to count
        flags, code = (), status_name(error)
    if result is not None:
        result.record(offset_s, clock() - intended, code, flags)


async def run_open_loop(
    call: Call,
    rate_per_second: float,
    duration_s: float,
    warmup_s: float = 0.0,
    *,
    arrival: Arrival = "constant",
    seed: int = 0,
    max_outstanding: int = 512,
    first_number: int = 0,
    number_stride: int = 1,
    server_pids: Sequence[int] = (),
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> LoadResult:
    """Offers `rate_per_second` for `warmup_s` (not measured) then `duration_s` (measured),
    request `k` numbered `first_number + k * number_stride` (generator processes interleave
    their numbers). Waits for the requests still in flight at the end (each carries its own
    deadline) before returning."""
    result = LoadResult(rate_per_second, duration_s)
    offsets = intended_offsets(rate_per_second, warmup_s + duration_s, arrival=arrival, seed=seed)
    outstanding: set[asyncio.Task[None]] = set()
    began = clock()
    window: tuple[float, float, float] | None = None

    def _number(position: int) -> int:
        return first_number + position * number_stride

    def open_window() -> tuple[float, float, float]:
        return clock(), time.process_time(), cpu_seconds(server_pids)

    for position, offset in enumerate(offsets):
        measured = offset >= warmup_s
        if measured and window is None:
            await _sleep_until(began + warmup_s, clock, sleep)
            window = open_window()
        intended = began + offset
        await _sleep_until(intended, clock, sleep)
        if not measured:
            if len(outstanding) < max_outstanding:
                _spawn(outstanding, _one(call, _number(position), intended, 0.0, None, clock))
            continue
        result.scheduled += 1
        if len(outstanding) >= max_outstanding:
            result.record_drop(offset - warmup_s)
            continue
        result.send_lag.record(max(0.0, clock() - intended))
        task = _one(call, _number(position), intended, offset - warmup_s, result, clock)
        _spawn(outstanding, task)
    if window is None:
        await _sleep_until(began + warmup_s, clock, sleep)
        window = open_window()
    await _sleep_until(began + warmup_s + duration_s, clock, sleep)
    ended = clock()
    result.client_cpu_s = time.process_time() - window[1]
    result.server_cpu_s = cpu_seconds(server_pids) - window[2]
    result.window_s = ended - window[0]
    if outstanding:
        await asyncio.gather(*outstanding)
    return result


async def _sleep_until(
    when: float, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]
) -> None:
    delay = when - clock()
    if delay > 0:
        await sleep(delay)


def _spawn(outstanding: set[asyncio.Task[None]], coroutine: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coroutine)
    outstanding.add(task)
    task.add_done_callback(outstanding.discard)


# Recommend scenarios ------------------------------------------------------------------------

SCENARIOS = ("cache_hit", "full_path", "cold_start", "mixed")
# The mixed scenario's shares of each kind of request.
MIXED_SHARES = (("cache_hit", 0.70), ("full_path", 0.25), ("cold_start", 0.05))


@dataclass(frozen=True)
class RecommendScenario:
    """Which user request `number` asks for, by scenario:

    - cache_hit: one of the `cached_users` known users `user0...`, whose answers `prime`
      cached beforehand (the response cache answers);
    - full_path: a known user never asked before, `user{fresh_start + number}` (numbers never
      repeat within a run), so the response cache cannot hit and the whole pipeline runs on
      the user's real features; after `fresh_users` numbers it wraps (counted as
      served_from_cache when it does);
    - cold_start: an unknown user `cold-{run_id}-{number}` (the cold-start path);
    - mixed: each request one of those, drawn with MIXED_SHARES from the seed and its number.
    """

    name: str
    cached_users: int = 1000
    fresh_start: int = 1000
    fresh_users: int = 1_000_000
    run_id: str = "load"
    surface: str = "homepage"
    limit: int = 20
    seed: int = 0

    def kind(self, number: int) -> str:
        if self.name != "mixed":
            return self.name
        draw = random.Random(self.seed * 1_000_003 + number).random()
        for kind, share in MIXED_SHARES:
            if draw < share:
                return kind
            draw -= share
        return MIXED_SHARES[-1][0]

    def user(self, number: int) -> str:
        kind = self.kind(number)
        if kind == "cache_hit":
            return f"user{number % self.cached_users}"
        if kind == "full_path":
            return f"user{self.fresh_start + number % self.fresh_users}"
        if kind == "cold_start":
            return f"cold-{self.run_id}-{number}"
        raise ValueError(f"unknown scenario {self.name!r}; one of {', '.join(SCENARIOS)}")


def degradation_flags(response: Any) -> list[str]:
    """The flags a RecommendResponse raised: its degradation booleans and cold_start."""
    flags = [
        descriptor.name
        for descriptor, value in response.degradation.ListFields()
        if value is True  # failed_shard_ids is a list: partial_retrieval names it
    ]
    if response.cold_start:
        flags.append("cold_start")
    return flags


def recommend_call(client: AsyncRecsysClient, scenario: RecommendScenario) -> Call:
    async def call(number: int) -> Sequence[str]:
        response = await client.recommend(
            scenario.user(number), surface=scenario.surface, limit=scenario.limit
        )
        return degradation_flags(response)

    return call


async def prime(client: AsyncRecsysClient, scenario: RecommendScenario, rounds: int = 4) -> int:
    """Asks for every cached user until the answer comes from the response cache (a degraded
    answer is not cached: the user is asked again next round). Returns how many users still
    had no cached answer after `rounds`."""
    semaphore = asyncio.Semaphore(8)

    async def cached(user: int) -> bool:
        async with semaphore:
            response = await client.recommend(
                f"user{user}", surface=scenario.surface, limit=scenario.limit
            )
        return bool(response.degradation.served_from_cache)

    users = list(range(scenario.cached_users))
    for _ in range(rounds):
        answers = await asyncio.gather(*(cached(user) for user in users))
        users = [user for user, hit in zip(users, answers, strict=True) if not hit]
        if not users:
            break
    return len(users)


@dataclass(frozen=True)
class LoadSpec:
    """Everything one generator process needs (picklable: it crosses to spawned processes)."""

    target: str
    scenario: RecommendScenario
    rate_per_second: float
    duration_s: float
    warmup_s: float = 3.0
    arrival: Arrival = "constant"
    seed: int = 0
    max_outstanding: int = 512
    # The first request's number: a ladder of runs passes a fresh range to each step.
    first_number: int = 0
    timeout_s: float = 2.0
    server_pids: tuple[int, ...] = ()


async def run_spec(
    spec: LoadSpec, *, process: int = 0, processes: int = 1, start_at: float | None = None
) -> LoadResult:
    """One generator process's share (`1/processes` of the rate) of the spec, its request
    numbers interleaved with the others'; starts at wall time `start_at` when given."""
    options = ClientOptions(target=spec.target, timeout_seconds=spec.timeout_s, retry=None)
    async with AsyncRecsysClient(options) as client:
        await client.check_health(timeout=10)
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        return await run_open_loop(
            recommend_call(client, spec.scenario),
            spec.rate_per_second / processes,
            spec.duration_s,
            spec.warmup_s,
            arrival=spec.arrival,
            seed=spec.seed * 7919 + process,
            max_outstanding=max(1, spec.max_outstanding // processes),
            first_number=spec.first_number + process,
            number_stride=processes,
            server_pids=spec.server_pids,
        )


def _run_in_process(spec: LoadSpec, process: int, processes: int, start_at: float) -> str:
    result = asyncio.run(run_spec(spec, process=process, processes=processes, start_at=start_at))
    return json.dumps(result.to_dict())


def run_processes(spec: LoadSpec, processes: int = 1) -> LoadResult:
    """Runs the spec from `processes` generator processes (one Python process is bounded by
    its one core) and merges their results; 1 runs it in this process."""
    if processes <= 1:
        return asyncio.run(run_spec(spec))
    # The processes start together once spawned (imports take a second or two).
    start_at = time.time() + 3.0
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            pool.submit(_run_in_process, spec, process, processes, start_at)
            for process in range(processes)
        ]
        results = [LoadResult.from_dict(json.loads(future.result())) for future in futures]
    merged = results[0]
    merged.duration_s = spec.duration_s
    for other in results[1:]:
        merged.merge(other)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out")
    parser.add_argument("--scenario", choices=SCENARIOS, default="full_path")
    parser.add_argument("--arrival", choices=("constant", "poisson"), default="constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument("--max-outstanding", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline of each call, s")
    parser.add_argument("--cached-users", type=int, default=1000)
    parser.add_argument("--fresh-start", type=int, default=1000, help="first full-path user")
    parser.add_argument("--fresh-users", type=int, default=1_000_000)
    parser.add_argument("--surface", default="homepage")
    parser.add_argument("--no-prime", action="store_true", help="skip caching user0...")
    parser.add_argument(
        "--server-pid", type=int, action="append", default=[],
        help="a server process whose CPU (with its descendants) to read",
    )  # fmt: skip
    parser.add_argument("--per-second", action="store_true", help="print each second too")
    arguments = parser.parse_args(argv)
    scenario = RecommendScenario(
        arguments.scenario,
        cached_users=arguments.cached_users,
        fresh_start=arguments.fresh_start,
        fresh_users=arguments.fresh_users,
        run_id=f"{os.getpid()}-{int(time.time())}",
        surface=arguments.surface,
        seed=arguments.seed,
    )
    pids = tuple(pid for root in arguments.server_pid for pid in process_tree(root))
    spec = LoadSpec(
        arguments.target, scenario, arguments.rate, arguments.duration, arguments.warmup,
        arguments.arrival, arguments.seed, arguments.max_outstanding,
        timeout_s=arguments.timeout, server_pids=pids,
    )  # fmt: skip
    if scenario.name in ("cache_hit", "mixed") and not arguments.no_prime:
        not_cached = asyncio.run(_prime(spec))
        sys.stderr.write(f"primed user0..: {not_cached} without a cached answer\n")
    result = run_processes(spec, arguments.processes)
    output: dict[str, Any] = {"scenario": scenario.name, **result.summary()}
    if arguments.per_second:
        output["per_second"] = result.per_second()
    sys.stdout.write(json.dumps(output, indent=2) + "\n")
    return 0


async def _prime(spec: LoadSpec) -> int:
    options = ClientOptions(target=spec.target, timeout_seconds=30, retry=None)
    async with AsyncRecsysClient(options) as client:
        return await prime(client, spec.scenario)


if __name__ == "__main__":
    raise SystemExit(main())
