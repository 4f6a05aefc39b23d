"""One fault under steady load: start the load, wait, inject, (repair,) let it run out, and
read what clients saw second by second relative to the fault."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loadgen import Histogram, LoadResult
from drills import load as loads
from drills.platform import Platform, say
from drills.report import DrillResult, Second

# Below the layout's capacity on this machine (the overload drill measures it): the steady
# rate every fault drill offers.
STEADY_RATE = 8.0


@dataclass
class Observed:
    """A fault run's load result with the fault's and the repair's offsets (seconds from the
    load's start)."""

    result: LoadResult
    refusals: Histogram
    fault_at: float
    repair_at: float | None
    duration_s: float
    marks: dict[str, float] = field(default_factory=dict)

    def seconds_with(self, flag: str | None) -> list[int]:
        """The load seconds with an error, or (flag given) an answer carrying `flag`."""
        found = []
        for second, bucket in sorted(self.result.seconds.items()):
            if sum(bucket.errors.values()) or (flag is not None and bucket.degraded.get(flag)):
                found.append(second)
        return found

    def detect(self, flag: str | None) -> float | None:
        """Seconds from the fault to the end of the first second showing it: an upper bound at
        the timeline's 1 s resolution (the buckets hold requests by intended start)."""
        after = [second for second in self.seconds_with(flag) if second + 1 > self.fault_at]
        return round(after[0] + 1 - self.fault_at, 1) if after else None

    def recover(self, flag: str | None, since: float | None = None) -> float | None:
        """Seconds from `since` (the repair, else the fault) to the end of the last second
        showing the fault; None when it still showed in the window's last seconds."""
        origin = (
            since
            if since is not None
            else (self.repair_at if self.repair_at is not None else self.fault_at)
        )
        showing = self.seconds_with(flag)
        if not showing:
            return 0.0
        last = showing[-1]
        if last >= math.floor(self.duration_s) - 2:
            return None
        return round(max(0.0, last + 1 - origin), 1)

    def share(self, flag: str = "degraded") -> float:
        return self.result.degraded.get(flag, 0) / max(1, self.result.successes)

    def count(self, flag: str) -> int:
        return self.result.degraded.get(flag, 0)

    def timeline(self) -> list[Second]:
        origin = math.floor(self.fault_at)
        return [
            Second(
                second - origin,
                bucket.successes,
                dict(bucket.errors),
                {flag: count for flag, count in bucket.degraded.items()},
                round(bucket.latency.percentile(0.5) * 1000, 1),
                round(bucket.latency.percentile(0.99) * 1000, 1),
            )
            for second, bucket in sorted(self.result.seconds.items())
        ]

    def fill(self, result: DrillResult, flag: str | None) -> DrillResult:
        result.requests = self.result.scheduled
        result.client_errors = self.result.error_count
        result.degraded_share = round(self.share(), 4)
        result.time_to_detect_s = self.detect(flag)
        result.time_to_recover_s = self.recover(flag)
        result.timeline = self.timeline()
        summary = self.result.summary()
        result.notes.append(
            f"load: {summary['offered_rps']} req/s offered, {summary['successes']} answered, "
            f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, errors "
            f"{summary['errors'] or 0}, flags {summary['degraded'] or '-'}"
        )
        return result


def under_load(
    platform: Platform,
    *,
    before_s: float,
    fault: Callable[[], None],
    hold_s: float = 0.0,
    repair: Callable[[], None] | None = None,
    after_s: float,
    rate: float = STEADY_RATE,
    retry: bool = False,
    users: int = 1000,
    first_user: int = 0,
) -> Observed:
    """Offers `rate` for before + hold + after seconds; `fault()` runs `before_s` in, `repair()`
    (if any) `hold_s` after the fault returned."""
    duration = before_s + hold_s + after_s
    start_at = time.time() + 3.0  # the generator process imports and connects meanwhile
    running = loads.start(
        loads.Load(
            platform.address, rate, duration, start_at, users=users, first_user=first_user,
            retry=retry,
        )
    )  # fmt: skip
    fault_wall: float | None = None
    repair_wall = None
    try:
        time.sleep(max(0.0, start_at + before_s - time.time()))
        fault_wall = time.time()
        fault()
        if repair is not None:
            time.sleep(max(0.0, fault_wall + hold_s - time.time()))
            repair_wall = time.time()
            repair()
    except BaseException:
        running.cancel()
        if fault_wall is not None and repair is not None and repair_wall is None:
            # Never leave the fault in place for the drills after this one.
            repair()
        raise
    result, refusals, began = running.result()
    late = began - start_at
    if late > before_s / 2:
        raise RuntimeError(f"the load began {late:.1f} s late: the fault came before the load")
    return Observed(
        result, refusals, fault_wall - began,
        None if repair_wall is None else repair_wall - began, duration,
    )  # fmt: skip


def timed(name: str, criterion: str, run: Callable[[DrillResult], None]) -> DrillResult:
    """Runs one drill; an exception fails it (with the reason) instead of ending the run."""
    say(f"drill: {name}")
    result = DrillResult(name, criterion, passed=False)
    started = time.monotonic()
    try:
        run(result)
    except Exception as error:  # a drill that could not run is a failed drill, reported
        result.check(f"the drill ran to the end ({type(error).__name__}: {error})", False)
    result.duration_s = time.monotonic() - started
    result.settle()
    say(f"drill: {name}: {'pass' if result.passed else 'FAIL'} in {result.duration_s:.0f} s")
    return result
