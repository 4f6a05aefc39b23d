"""FeatureStore: per-user features read on the serving path (embeddings today; preferences,
recent interactions and item features join with the Recommend service)."""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.domain.interactions import Interaction


@dataclass(frozen=True, slots=True)
class UserEmbedding:
    """A user's embedding and the version of the model that produced it (seed Simulation 6)."""

    vector: npt.NDArray[np.float32]
    embedding_version: str
    generated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ItemFeatures:
    """What ranking and filtering need of an item; popularity and freshness in [0, 1]."""

    category: str
    popularity: float
    freshness: float
    embedding: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True, slots=True)
class ItemFeatureBatch:
    """Item features of many items as aligned arrays; defaults (0, "", zero vector) where an
    item has none, and `found` says which had."""

    categories: list[str]
    popularity: npt.NDArray[np.float32]
    freshness: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32] | None
    found: npt.NDArray[np.bool_]


def batch_from(features: Sequence[ItemFeatures | None]) -> ItemFeatureBatch:
    """Packs per-item features (None when unknown) into a batch."""
    count = len(features)
    dimension = next((f.embedding.shape[0] for f in features if f and f.embedding is not None), 0)
    embeddings = np.zeros((count, dimension), np.float32) if dimension else None
    popularity = np.zeros(count, np.float32)
    freshness = np.zeros(count, np.float32)
    categories = [""] * count
    found = np.zeros(count, bool)
    for row, item in enumerate(features):
        if item is None:
            continue
        found[row] = True
        categories[row] = item.category
        popularity[row] = item.popularity
        freshness[row] = item.freshness
        if embeddings is not None and item.embedding is not None:
            embeddings[row] = item.embedding
    return ItemFeatureBatch(categories, popularity, freshness, embeddings, found)


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """Everything the serving path reads about a user, in one round trip."""

    embedding: UserEmbedding | None
    # Category -> affinity in [0, 1] (from onboarding choices and behaviour).
    preferences: Mapping[str, float]
    # Items interacted with recently (seed: last 30 minutes), newest first.
    recent_item_ids: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return self.embedding is None and not self.preferences and not self.recent_item_ids


class FeatureStore(abc.ABC):
    """Reads raise RecsysError (Unavailable, DeadlineExceeded) when the store cannot answer;
    callers on the serving path degrade to default features."""

    @abc.abstractmethod
    async def get_user_embedding(self, user_id: str) -> UserEmbedding | None:
        """The user's embedding, or None when the user has none."""

    @abc.abstractmethod
    async def put_user_embedding(self, user_id: str, embedding: UserEmbedding) -> None: ...

    @abc.abstractmethod
    async def get_user_features(self, user_id: str) -> UserFeatures:
        """Embedding, preferences and recent interactions of a user, in one round trip."""

    @abc.abstractmethod
    async def put_user_preferences(
        self, user_id: str, preferences: Mapping[str, float]
    ) -> None: ...

    @abc.abstractmethod
    async def record_events(
        self, events: Sequence[Interaction], *, now: dt.datetime | None = None
    ) -> None:
        """Adds the events' items to their users' recent interactions: a sliding window by event
        time (the adapter's `recent_window_seconds`, seed: 30 minutes) of at most
        `recent_keep` distinct items, each at its latest event time. Events older than the
        window (relative to `now`, default the wall clock) change nothing, skips are ignored,
        and applying an event again leaves the same state (idempotent by construction: a
        redelivered event needs no guard). Reads (`get_user_features`) return the items
        still inside the window at read time, newest first, ties by item id."""

    @abc.abstractmethod
    async def get_item_features(self, item_ids: Sequence[int]) -> ItemFeatureBatch:
        """Features of the items, in order, in one round trip."""

    @abc.abstractmethod
    async def put_item_features(self, items: Mapping[int, ItemFeatures]) -> None: ...

    @abc.abstractmethod
    async def get_default_user_embedding(self) -> UserEmbedding | None:
        """The default features (average user embedding) served when a user's cannot be read."""

    @abc.abstractmethod
    async def put_default_user_embedding(self, embedding: UserEmbedding) -> None: ...

    @abc.abstractmethod
    async def embedding_version_counts(self) -> dict[str, int]:
        """How many users hold an embedding of each version (seed Simulation 6: users move to
        a new version as `recsys migrate-embeddings` backfills them). Kept up to date by every
        `put_user_embedding` and `delete_user`, so reading it costs one round trip."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> int:
        """Removes everything stored for the user; returns how many records went."""

    async def close(self) -> None:
        return None
