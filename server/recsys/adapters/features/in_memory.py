"""FeatureStore in process memory, for the embedded mode (and as the contract's reference)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from recsys.ports.features import (
    FeatureStore,
    ItemFeatureBatch,
    ItemFeatures,
    UserEmbedding,
    batch_from,
)
from recsys.settings import RecsysSettings


class InMemoryFeatureStore(FeatureStore):
    def __init__(self) -> None:
        self._embeddings: dict[str, UserEmbedding] = {}
        self._items: dict[int, ItemFeatures] = {}
        self._default: UserEmbedding | None = None

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
        return 1 if self._embeddings.pop(user_id, None) is not None else 0
