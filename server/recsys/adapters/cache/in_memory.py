"""Recommendation cache in process memory (embedded mode), with TTLs and a size bound."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence

from recsys.ports.cache import RESPONSES, CachedRecommendations, RecommendationCache, check_entry
from recsys.settings import RecsysSettings


class InMemoryRecommendationCache(RecommendationCache):
    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: collections.OrderedDict[tuple[str, str, str], tuple[float, bytes]] = (
            collections.OrderedDict()
        )

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> InMemoryRecommendationCache:
        return cls(max_entries=settings.recommend.cache_max_entries)

    async def get(self, kind: str, user_id: str, surface: str) -> CachedRecommendations | None:
        check_entry(kind)
        key = (kind, user_id, surface)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return CachedRecommendations.from_bytes(entry[1])

    async def put(
        self,
        kind: str,
        user_id: str,
        surface: str,
        value: CachedRecommendations,
        ttl_seconds: int,
    ) -> None:
        check_entry(kind, ttl_seconds)
        key = (kind, user_id, surface)
        self._entries[key] = (self._clock() + ttl_seconds, value.to_bytes())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def invalidate_responses(self, user_ids: Sequence[str]) -> int:
        users = set(user_ids)
        keys = [key for key in self._entries if key[0] == RESPONSES and key[1] in users]
        for key in keys:
            del self._entries[key]
        return len(keys)

    async def delete_user(self, user_id: str) -> int:
        keys = [key for key in self._entries if key[1] == user_id]
        for key in keys:
            del self._entries[key]
        return len(keys)
