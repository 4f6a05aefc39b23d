"""Per-process rate limiting for the embedded mode (one process, so one counter is exact)."""

from __future__ import annotations

import time
from collections.abc import Callable

from recsys.ports.rate_limit import RateDecision, RateLimiter
from recsys.settings import RecsysSettings


class InMemoryRateLimiter(RateLimiter):
    def __init__(
        self, *, limit: int, window_seconds: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(limit=limit, window_seconds=window_seconds)
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> InMemoryRateLimiter:
        rate = settings.rate_limit
        return cls(limit=rate.requests_per_window, window_seconds=rate.window_seconds)

    async def hit(self, key: str) -> RateDecision:
        now = self._clock()
        started, count = self._windows.get(key, (now, 0))
        if now - started >= self.window_seconds:
            started, count = now, 0
        count += 1
        self._windows[key] = (started, count)
        if len(self._windows) > 100_000:
            self._forget_expired(now)
        if count <= self.limit:
            return RateDecision(True, self.limit - count, 0.0)
        return RateDecision(False, 0, max(0.0, started + self.window_seconds - now))

    def _forget_expired(self, now: float) -> None:
        expired = [k for k, (s, _) in self._windows.items() if now - s >= self.window_seconds]
        for key in expired:
            del self._windows[key]

    async def reset(self, key: str) -> int:
        return 1 if self._windows.pop(key, None) is not None else 0
