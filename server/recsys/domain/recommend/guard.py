"""The one degradation policy of the Recommend pipeline, written once: every dependency read
runs through `Guard.read` with its stage name, a budget (the stage's own, capped by what is
left of the caller's deadline), a fallback value and the flag a fallback raises. A read that
is slow or whose dependency is down is logged, counted and answered by the fallback; anything
else (a bug, a refused request) propagates."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from recsys.deadlines import remaining_seconds
from recsys.domain.recommend.observer import RecommendObserver
from recsys.domain.recommend.values import Degradation, Flag
from recsys.errors import DeadlineExceeded, RecsysError, Unavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")


def is_outage(error: RecsysError) -> bool:
    """The dependency is down or slow: degrade. A refusal of our request (InvalidArgument,
    FailedPrecondition...) is a bug to surface, not to serve around."""
    return isinstance(error, Unavailable | DeadlineExceeded)


@dataclass
class Trace:
    """What one request's reads ran into; becomes the answer's `Degradation`."""

    flags: set[Flag] = field(default_factory=set)
    failed_shard_ids: set[int] = field(default_factory=set)
    # Candidate sources (`SourceKind` values) that failed or ran out of time.
    failed_candidate_sources: set[str] = field(default_factory=set)

    def raise_flag(self, flag: Flag) -> None:
        self.flags.add(flag)

    def candidate_source_failed(self, source: str) -> None:
        self.flags.add(Flag.PARTIAL_CANDIDATES)
        self.failed_candidate_sources.add(source)

    def degradation(self) -> Degradation:
        return Degradation.of(
            self.flags,
            self.failed_shard_ids,
            failed_candidate_sources=self.failed_candidate_sources,
        )


class Guard:
    def __init__(self, observer: RecommendObserver, *, reserve_seconds: float = 0.005) -> None:
        self.observer = observer
        self.reserve_seconds = reserve_seconds

    @asynccontextmanager
    async def timed(self, stage: str) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observer.stage_finished(stage, time.perf_counter() - started)

    def budget(self, stage_seconds: float | None) -> float | None:
        """The stage's budget capped by the caller's remaining time (less the reserve)."""
        remaining = remaining_seconds()
        if remaining is None:
            return stage_seconds
        return min(stage_seconds or math.inf, remaining - self.reserve_seconds)

    async def read(
        self,
        stage: str,
        call: Callable[[], Awaitable[T]],
        *,
        fallback: T,
        trace: Trace,
        budget_seconds: float | None = None,
        flag: Flag | None = None,
        degrades: Callable[[RecsysError], bool] = is_outage,
    ) -> T:
        """`call()` within its budget, or `fallback` (and `flag` raised) when it runs out of
        time or fails with an error `degrades` accepts; other errors propagate."""
        budget = self.budget(budget_seconds)
        error: RecsysError
        async with self.timed(stage):
            try:
                if budget is not None and budget <= 0:
                    raise DeadlineExceeded(f"no time left for {stage}")
                async with asyncio.timeout(budget):
                    return await call()
            except TimeoutError:
                assert budget is not None
                error = DeadlineExceeded(f"{stage} took longer than {budget * 1000:.0f} ms")
            except RecsysError as caught:
                if not degrades(caught):
                    raise
                error = caught
        kind = "timeout" if isinstance(error, DeadlineExceeded) else error.code.name.lower()
        logger.warning(
            "dependency read failed; degrading",
            extra={"stage": stage, "error": error.message, "kind": kind},
        )
        self.observer.stage_failed(stage, kind)
        if flag is not None:
            trace.raise_flag(flag)
        return fallback
