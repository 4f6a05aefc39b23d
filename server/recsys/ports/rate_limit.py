"""RateLimiter: per-key request budgets (seed: 100 Recommend requests per minute per user)."""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    # Requests left in the current window after this one (0 when refused).
    remaining: int
    # When a refused caller may try again; 0 when allowed.
    retry_after_seconds: float


class RateLimiter(abc.ABC):
    """Fixed windows: the first request of a key opens a window of `window_seconds`; at most
    `limit` requests are allowed in it. Raises Unavailable when the backing store is down (the
    caller decides whether to fail open)."""

    def __init__(self, *, limit: int, window_seconds: int) -> None:
        if limit < 1 or window_seconds < 1:
            raise ValueError("limit and window_seconds must be at least 1")
        self.limit = limit
        self.window_seconds = window_seconds

    @abc.abstractmethod
    async def hit(self, key: str) -> RateDecision:
        """Counts one request for `key` and says whether it is allowed."""

    @abc.abstractmethod
    async def reset(self, key: str) -> int:
        """Forgets a key (user erasure); returns how many records went."""

    async def close(self) -> None:
        return None
