"""ItemCounters in process memory (embedded mode, and the contract's reference): the same log
space as Redis, with event markers that expire after their TTL."""

from __future__ import annotations

import collections
import datetime as dt
import heapq
import math
import time
from collections.abc import Callable, Sequence

from recsys.adapters.counters import half_lives, increments, wall_clock
from recsys.domain.interactions import Interaction
from recsys.domain.popularity import decayed, log_add
from recsys.ports.counters import Counter, ItemCounters
from recsys.settings import RecsysSettings


class InMemoryItemCounters(ItemCounters):
    def __init__(
        self,
        *,
        popularity_half_life_seconds: float = 168 * 3600,
        trending_half_life_seconds: float = 3600,
        event_marker_ttl_seconds: float = 7 * 86_400,
        clock: Callable[[], dt.datetime] = wall_clock,
        marker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.half_lives = {
            Counter.POPULARITY: popularity_half_life_seconds,
            Counter.TRENDING: trending_half_life_seconds,
        }
        self.event_marker_ttl_seconds = event_marker_ttl_seconds
        self.clock = clock
        self._marker_clock = marker_clock
        self._logs: dict[Counter, dict[int, float]] = {counter: {} for counter in Counter}
        # Event id -> expiry; the queue holds them in expiry order (one TTL for all) for pruning.
        self._markers: dict[str, float] = {}
        self._expiries: collections.deque[tuple[float, str]] = collections.deque()

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> InMemoryItemCounters:
        seconds = half_lives(settings)
        return cls(
            popularity_half_life_seconds=seconds[Counter.POPULARITY],
            trending_half_life_seconds=seconds[Counter.TRENDING],
            event_marker_ttl_seconds=settings.realtime.event_marker_ttl_seconds,
        )

    async def record(self, events: Sequence[Interaction]) -> int:
        now = self._marker_clock()
        self._forget_expired(now)
        new = 0
        for increment in increments(events, self.half_lives, self.clock()):
            if increment.event_id in self._markers:
                continue
            expiry = now + self.event_marker_ttl_seconds
            self._markers[increment.event_id] = expiry
            self._expiries.append((expiry, increment.event_id))
            for counter, term in increment.terms.items():
                logs = self._logs[counter]
                logs[increment.item_id] = log_add(logs.get(increment.item_id, -math.inf), term)
            new += 1
        return new

    def _forget_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expiry, event_id = self._expiries.popleft()
            if self._markers.get(event_id) == expiry:
                del self._markers[event_id]

    async def values(
        self, counter: Counter, item_ids: Sequence[int], *, now: dt.datetime | None = None
    ) -> dict[int, float]:
        moment = self.clock() if now is None else now
        logs = self._logs[counter]
        half_life = self.half_lives[counter]
        return {
            item_id: decayed(logs.get(item_id, -math.inf), moment, half_life)
            for item_id in item_ids
        }

    async def top(self, counter: Counter, limit: int) -> list[int]:
        if limit <= 0:
            return []
        logs = self._logs[counter]
        # Ordering by the log value is ordering by the counter at any time.
        return heapq.nsmallest(limit, logs, key=lambda item: (-logs[item], item))
