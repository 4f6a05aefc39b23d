"""What the Recommend pipeline reports, as a small protocol; the Prometheus implementation is
`recsys.observability.metrics.RecommendMetrics`, the null object serves tests and tools."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RecommendObserver(Protocol):
    def stage_finished(self, stage: str, seconds: float) -> None: ...

    def stage_failed(self, stage: str, kind: str) -> None:
        """A dependency read failed (`kind`: timeout, unavailable, refused) and fell back."""

    def cache_hit(self, source: str) -> None: ...

    def rate_limited(self) -> None: ...

    def rate_limit_bypassed(self) -> None: ...

    def answered(
        self, seconds: float, *, cold_start: bool, empty: bool, degradations: Sequence[str]
    ) -> None: ...

    def failed(self, seconds: float) -> None:
        """A call that ended with an error (bad input, rate limit, limiter down)."""


class NullRecommendObserver:
    def stage_finished(self, stage: str, seconds: float) -> None:
        return None

    def stage_failed(self, stage: str, kind: str) -> None:
        return None

    def cache_hit(self, source: str) -> None:
        return None

    def rate_limited(self) -> None:
        return None

    def rate_limit_bypassed(self) -> None:
        return None

    def answered(
        self, seconds: float, *, cold_start: bool, empty: bool, degradations: Sequence[str]
    ) -> None:
        return None

    def failed(self, seconds: float) -> None:
        return None
