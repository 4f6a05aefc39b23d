"""RecommendationCache: the response cache (the seed's `recommendations:{user}:{surface}`, 5
minutes) and pre-computed results (`precomputed:{user}:{surface}`, 1 hour). The Redis adapter
names a user by a hash tag of the hashed id, not the id itself (docs/recommend.md)."""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

RESPONSES = "recommendations"
PRECOMPUTED = "precomputed"
KINDS = (RESPONSES, PRECOMPUTED)


@dataclass(frozen=True, slots=True)
class CachedItem:
    item_id: int
    score: float
    category: str = ""
    reason: str = ""
    reason_text: str = ""


@dataclass(frozen=True, slots=True)
class CachedRecommendations:
    items: tuple[CachedItem, ...]
    model_version: str = ""
    index_version: str = ""
    cold_start: bool = False
    explanation: str = ""
    ranking_backend: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedRecommendations:
        raw = json.loads(data)
        raw["items"] = tuple(CachedItem(**item) for item in raw["items"])
        return cls(**raw)


def check_entry(kind: str, ttl_seconds: int | None = None) -> None:
    """Every adapter refuses a `kind` outside KINDS and a TTL under one second (writes) with
    ValueError: both are bugs of the caller, never a cache outage to serve around."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; the kinds are {', '.join(KINDS)}")
    if ttl_seconds is not None and ttl_seconds < 1:
        raise ValueError(f"a cache TTL must be at least 1 second, got {ttl_seconds}")


class RecommendationCache(abc.ABC):
    """Reads and writes raise RecsysError (Unavailable) when the store is down; the pipeline
    then serves without the cache. An unknown `kind` is refused (`check_entry`)."""

    @abc.abstractmethod
    async def get(self, kind: str, user_id: str, surface: str) -> CachedRecommendations | None:
        """`kind` is "recommendations" (RESPONSES, the response cache) or "precomputed"."""

    @abc.abstractmethod
    async def put(
        self,
        kind: str,
        user_id: str,
        surface: str,
        value: CachedRecommendations,
        ttl_seconds: int,
    ) -> None: ...

    @abc.abstractmethod
    async def invalidate_responses(self, user_ids: Sequence[str]) -> int:
        """Removes the users' cached answers (RESPONSES, every surface) but keeps pre-computed
        ones, which are re-checked at serve time; returns how many went. Called when new
        interactions make cached answers stale (an item to exclude now): a consumer's batch
        holds hundreds of users, so they go together (two round trips in Redis)."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> int:
        """Removes every cached and pre-computed entry of the user; returns how many."""

    async def close(self) -> None:
        return None
