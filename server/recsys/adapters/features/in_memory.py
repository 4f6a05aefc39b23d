"""FeatureStore in process memory, for the embedded mode (and as the contract's reference)."""

from __future__ import annotations

from recsys.ports.features import FeatureStore, UserEmbedding
from recsys.settings import RecsysSettings


class InMemoryFeatureStore(FeatureStore):
    def __init__(self) -> None:
        self._embeddings: dict[str, UserEmbedding] = {}

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

    async def delete_user(self, user_id: str) -> int:
        return 1 if self._embeddings.pop(user_id, None) is not None else 0
