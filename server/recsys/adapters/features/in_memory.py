"""FeatureStore in process memory, for the embedded mode (and as the contract's reference)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from recsys.ports.features import (
    FeatureStore,
    ItemFeatureBatch,
    ItemFeatures,
    UserEmbedding,
    UserFeatures,
    batch_from,
)
from recsys.settings import RecsysSettings


class InMemoryFeatureStore(FeatureStore):
    def __init__(self) -> None:
        self._embeddings: dict[str, UserEmbedding] = {}
        self._items: dict[int, ItemFeatures] = {}
        self._default: UserEmbedding | None = None
        self._preferences: dict[str, dict[str, float]] = {}
        self._recent: dict[str, tuple[float, list[int]]] = {}

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> InMemoryFeatureStore:
        return cls()

    async def get_user_embedding(self, user_id: str) -> UserEmbedding | None:
        return self._embeddings.get(user_id)

    async def put_user_embedding(self, user_id: str, embedding: UserEmbedding) -> None:
        # Copy so later changes to the caller's array do not leak into the store.
        self._embeddings[user_id] = UserEmbedding(
            embedding.vector.astype("float32", copy=True),
            embedding.embedding_version,
            embedding.generated_at,
        )

    async def get_user_features(self, user_id: str) -> UserFeatures:
        recent = self._recent.get(user_id)
        items: tuple[int, ...] = ()
        if recent is not None and recent[0] > time.monotonic():
            items = tuple(recent[1])
        return UserFeatures(
            self._embeddings.get(user_id), dict(self._preferences.get(user_id, {})), items
        )

    async def put_user_preferences(self, user_id: str, preferences: Mapping[str, float]) -> None:
        self._preferences[user_id] = {key: float(value) for key, value in preferences.items()}

    async def record_recent_interactions(
        self, user_id: str, item_ids: Sequence[int], *, ttl_seconds: int = 1800, keep: int = 100
    ) -> None:
        now = time.monotonic()
        previous = self._recent.get(user_id)
        items = previous[1] if previous is not None and previous[0] > now else []
        self._recent[user_id] = (now + ttl_seconds, ([*reversed(item_ids), *items])[:keep])

    async def get_item_features(self, item_ids: Sequence[int]) -> ItemFeatureBatch:
        items = self._items
        return batch_from([items.get(item_id) for item_id in item_ids])

    async def put_item_features(self, items: Mapping[int, ItemFeatures]) -> None:
        for item_id, features in items.items():
            embedding = None if features.embedding is None else features.embedding.astype("float32")
            self._items[int(item_id)] = ItemFeatures(
                features.category, float(features.popularity), float(features.freshness), embedding
            )

    async def get_default_user_embedding(self) -> UserEmbedding | None:
        return self._default

    async def put_default_user_embedding(self, embedding: UserEmbedding) -> None:
        self._default = embedding

    async def delete_user(self, user_id: str) -> int:
        removed = [
            self._embeddings.pop(user_id, None),
            self._preferences.pop(user_id, None),
            self._recent.pop(user_id, None),
        ]
        return sum(value is not None for value in removed)
