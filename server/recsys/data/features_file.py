"""Feature snapshots: what training produces for the feature store (user embeddings with their
embedding version, category preferences, item features with embeddings, the default user
embedding), as one `.npz` file, and loading one into any FeatureStore through the port.

Redis deployments load a snapshot once (`recsys data features`); the in-memory store of the
embedded mode loads `features.preload_path` at every start, since it keeps nothing across runs.
Given the metadata repository, loading leaves out erased users (their tombstones).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from recsys.errors import ConfigurationError
from recsys.ports.features import FeatureStore, ItemFeatures, UserEmbedding
from recsys.ports.metadata import MetadataRepository

FloatArray = npt.NDArray[np.float32]
_ARRAYS = (
    "embedding_version",
    "generated_at",
    "user_ids",
    "user_vectors",
    "preference_categories",
    "user_preferences",
    "item_ids",
    "item_categories",
    "item_popularity",
    "item_freshness",
    "item_vectors",
    "default_user_vector",
)


@dataclass(frozen=True)
class FeatureSnapshot:
    embedding_version: str
    generated_at: dt.datetime
    user_ids: list[str]
    user_vectors: FloatArray  # users x d
    preference_categories: list[str]
    user_preferences: FloatArray  # users x categories, 0 = no affinity
    item_ids: npt.NDArray[np.int64]
    item_categories: list[str]
    item_popularity: FloatArray
    item_freshness: FloatArray
    item_vectors: FloatArray  # items x d
    default_user_vector: FloatArray

    def user_embedding(self, row: int) -> UserEmbedding:
        return UserEmbedding(self.user_vectors[row], self.embedding_version, self.generated_at)

    def without_users(self, user_ids: Collection[str]) -> FeatureSnapshot:
        """The snapshot without these users' rows. Items and the default user embedding (an
        average over every user, nobody's own features) stay."""
        left_out = set(user_ids)
        if not left_out.intersection(self.user_ids):
            return self
        rows = [row for row, user in enumerate(self.user_ids) if user not in left_out]
        return replace(
            self,
            user_ids=[self.user_ids[row] for row in rows],
            user_vectors=self.user_vectors[rows],
            user_preferences=self.user_preferences[rows],
        )

    def preferences(self, row: int) -> dict[str, float]:
        values = self.user_preferences[row]
        return {
            category: float(value)
            for category, value in zip(self.preference_categories, values, strict=True)
            if value > 0
        }


def save_features(path: Path, snapshot: FeatureSnapshot) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial.npz")
    np.savez(
        temporary,
        embedding_version=np.array(snapshot.embedding_version),
        generated_at=np.array(snapshot.generated_at.isoformat()),
        user_ids=np.array(snapshot.user_ids, dtype=str),
        user_vectors=snapshot.user_vectors.astype(np.float32),
        preference_categories=np.array(snapshot.preference_categories, dtype=str),
        user_preferences=snapshot.user_preferences.astype(np.float32),
        item_ids=snapshot.item_ids.astype(np.int64),
        item_categories=np.array(snapshot.item_categories, dtype=str),
        item_popularity=snapshot.item_popularity.astype(np.float32),
        item_freshness=snapshot.item_freshness.astype(np.float32),
        item_vectors=snapshot.item_vectors.astype(np.float32),
        default_user_vector=snapshot.default_user_vector.astype(np.float32),
    )
    temporary.replace(path)  # readers never see half a file


def load_features(path: Path) -> FeatureSnapshot:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in _ARRAYS if name not in archive]
            if missing:
                raise ConfigurationError(f"{path} is not a feature snapshot (no {missing[0]})")
            arrays = {name: archive[name] for name in _ARRAYS}
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"cannot read the feature snapshot {path}: {error}") from error
    snapshot = FeatureSnapshot(
        embedding_version=str(arrays["embedding_version"]),
        generated_at=dt.datetime.fromisoformat(str(arrays["generated_at"])),
        user_ids=[str(user) for user in arrays["user_ids"]],
        user_vectors=arrays["user_vectors"],
        preference_categories=[str(name) for name in arrays["preference_categories"]],
        user_preferences=arrays["user_preferences"],
        item_ids=arrays["item_ids"],
        item_categories=[str(name) for name in arrays["item_categories"]],
        item_popularity=arrays["item_popularity"],
        item_freshness=arrays["item_freshness"],
        item_vectors=arrays["item_vectors"],
        default_user_vector=arrays["default_user_vector"],
    )
    users, items = len(snapshot.user_ids), len(snapshot.item_ids)
    if (
        snapshot.user_vectors.shape[0] != users
        or snapshot.user_preferences.shape != (users, len(snapshot.preference_categories))
        or snapshot.item_vectors.shape[0] != items
        or len(snapshot.item_categories) != items
        or snapshot.item_popularity.shape != (items,)
        or snapshot.item_freshness.shape != (items,)
        or snapshot.user_vectors.shape[1:] != snapshot.item_vectors.shape[1:]
    ):
        raise ConfigurationError(f"{path}: the arrays of the feature snapshot do not line up")
    return snapshot


async def load_into_store(
    snapshot: FeatureSnapshot,
    store: FeatureStore,
    *,
    metadata: MetadataRepository | None = None,
    batch: int = 2_000,
    concurrency: int = 16,
    progress: Callable[[str, int], None] | None = None,
) -> int:
    """Writes every user's embedding and preferences, every item's features and the default
    user embedding; at most `concurrency` writes are in flight (a Redis pool has a bound).

    With `metadata`, users erased there (tombstones) are left out: every load for serving
    passes it (only a store of a fresh deployment, nobody erased yet, may do without).
    Returns how many users were left out."""
    erased = await metadata.erased_user_ids(snapshot.user_ids) if metadata is not None else set()
    snapshot = snapshot.without_users(erased)
    if progress and erased:
        progress("users", len(erased))
    limit = asyncio.Semaphore(concurrency)

    async def bounded(write: Awaitable[None]) -> None:
        async with limit:
            await write

    for start in range(0, len(snapshot.item_ids), batch):
        stop = min(start + batch, len(snapshot.item_ids))
        await store.put_item_features(
            {
                int(snapshot.item_ids[row]): ItemFeatures(
                    snapshot.item_categories[row],
                    float(snapshot.item_popularity[row]),
                    float(snapshot.item_freshness[row]),
                    snapshot.item_vectors[row],
                )
                for row in range(start, stop)
            }
        )
        if progress:
            progress("items", stop - start)
    for start in range(0, len(snapshot.user_ids), batch):
        rows = range(start, min(start + batch, len(snapshot.user_ids)))
        writes = [
            store.put_user_embedding(snapshot.user_ids[row], snapshot.user_embedding(row))
            for row in rows
        ]
        writes += [
            store.put_user_preferences(snapshot.user_ids[row], preferences)
            for row in rows
            if (preferences := snapshot.preferences(row))
        ]
        await asyncio.gather(*(bounded(write) for write in writes))
        if progress:
            progress("users", len(rows))
    await store.put_default_user_embedding(
        UserEmbedding(
            snapshot.default_user_vector, snapshot.embedding_version, snapshot.generated_at
        )
    )
    return len(erased)
