"""The feature store's contents, read and written through the FeatureStore port (any adapter):
user embeddings (each with its own version and time), category preferences, item features and
the default user embedding, as one `.npz` file.

The port reads by id: the users asked for are those the metadata knows (profiles and everyone
with interactions) and the items of the catalogue, plus those of the feature snapshot an
in-memory store preloads. Users the store holds under ids the metadata never saw cannot be
listed (Redis keys carry a hash of the id, not the id); the export says how many there are.
Recent interactions (the 30-minute window) are not exported: a restore rebuilds them from the
restored interactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from recsys.backup.errors import BackupError
from recsys.data.features_file import FeatureSnapshot
from recsys.domain.interactions import Interaction
from recsys.ports.features import FeatureStore, ItemFeatures, UserEmbedding, UserFeatures
from recsys.settings import RecsysSettings

FEATURES_PATH = "features/features.npz"
FloatArray = npt.NDArray[np.float32]
BATCH = 1_000
CONCURRENCY = 32
# A job's Redis calls carry batches, not one serving read: the serving budget
# (redis.socket_timeout_ms, 50 ms) would time them out on a loaded machine.
JOB_TIMEOUT_MS = 5_000


@dataclass(frozen=True)
class FeatureExport:
    user_ids: list[str]
    has_embedding: npt.NDArray[np.bool_]
    user_vectors: FloatArray  # users x d, zeros where a user has none
    embedding_versions: list[str]
    generated_at: list[str]  # ISO 8601, "" where no embedding
    preferences: list[str]  # JSON objects, "" where none
    item_ids: npt.NDArray[np.int64]
    item_categories: list[str]
    item_popularity: FloatArray
    item_freshness: FloatArray
    item_vectors: FloatArray  # items x d, zeros where an item has none
    item_has_embedding: npt.NDArray[np.bool_]
    default: UserEmbedding | None
    # Users with an embedding in the store (its own count), exported or not.
    store_user_embeddings: int

    @property
    def user_embeddings(self) -> int:
        return int(self.has_embedding.sum())

    def embedding(self, row: int) -> UserEmbedding | None:
        if not self.has_embedding[row]:
            return None
        return UserEmbedding(
            self.user_vectors[row],
            self.embedding_versions[row],
            dt.datetime.fromisoformat(self.generated_at[row]),
        )

    def embedding_versions_held(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row, version in enumerate(self.embedding_versions):
            if self.has_embedding[row]:
                counts[version] = counts.get(version, 0) + 1
        return counts


async def _bounded(calls: Sequence[Awaitable[UserFeatures]]) -> list[UserFeatures]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Awaitable[UserFeatures]) -> UserFeatures:
        async with limit:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


async def export_features(
    store: FeatureStore, user_ids: Iterable[str], item_ids: Iterable[int]
) -> FeatureExport:
    users: list[str] = []
    vectors: list[FloatArray | None] = []
    versions: list[str] = []
    times: list[str] = []
    preferences: list[str] = []
    ordered = sorted(set(user_ids))
    for start in range(0, len(ordered), BATCH):
        chunk = ordered[start : start + BATCH]
        found = await _bounded([store.get_user_features(user) for user in chunk])
        for user, features in zip(chunk, found, strict=True):
            if features.embedding is None and not features.preferences:
                continue
            users.append(user)
            embedding = features.embedding
            vectors.append(None if embedding is None else embedding.vector)
            versions.append("" if embedding is None else embedding.embedding_version)
            times.append("" if embedding is None else embedding.generated_at.isoformat())
            preferences.append(
                json.dumps(dict(features.preferences)) if features.preferences else ""
            )
    default = await store.get_default_user_embedding()
    dimension = next((len(vector) for vector in vectors if vector is not None), 0)
    if not dimension and default is not None:
        dimension = len(default.vector)
    user_matrix = np.zeros((len(users), dimension), np.float32)
    for row, vector in enumerate(vectors):
        if vector is not None:
            user_matrix[row] = vector
    items = await _export_items(store, sorted(set(int(item) for item in item_ids)))
    counts = await store.embedding_version_counts()
    return FeatureExport(
        user_ids=users,
        has_embedding=np.array([vector is not None for vector in vectors], bool),
        user_vectors=user_matrix,
        embedding_versions=versions,
        generated_at=times,
        preferences=preferences,
        item_ids=items.item_ids,
        item_categories=items.categories,
        item_popularity=items.popularity,
        item_freshness=items.freshness,
        item_vectors=items.vectors,
        item_has_embedding=items.has_embedding,
        default=default,
        store_user_embeddings=sum(counts.values()),
    )


class _Items(NamedTuple):
    item_ids: npt.NDArray[np.int64]
    categories: list[str]
    popularity: FloatArray
    freshness: FloatArray
    vectors: FloatArray
    has_embedding: npt.NDArray[np.bool_]


async def _export_items(store: FeatureStore, item_ids: list[int]) -> _Items:
    kept: list[int] = []
    categories: list[str] = []
    popularity: list[float] = []
    freshness: list[float] = []
    vectors: list[FloatArray | None] = []
    for start in range(0, len(item_ids), BATCH):
        chunk = item_ids[start : start + BATCH]
        batch = await store.get_item_features(chunk)
        for row, item in enumerate(chunk):
            if not batch.found[row]:
                continue
            kept.append(item)
            categories.append(batch.categories[row])
            popularity.append(float(batch.popularity[row]))
            freshness.append(float(batch.freshness[row]))
            has_vector = batch.embeddings is not None and bool(np.any(batch.embeddings[row]))
            vectors.append(
                batch.embeddings[row] if has_vector and batch.embeddings is not None else None
            )
    dimension = next((len(vector) for vector in vectors if vector is not None), 0)
    matrix = np.zeros((len(kept), dimension), np.float32)
    for row, vector in enumerate(vectors):
        if vector is not None:
            matrix[row] = vector
    return _Items(
        np.array(kept, np.int64),
        categories,
        np.array(popularity, np.float32),
        np.array(freshness, np.float32),
        matrix,
        np.array([vector is not None for vector in vectors], bool),
    )


def save_export(path: Path, export: FeatureExport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    default = export.default
    with open(path, "wb") as handle:
        np.savez(
            handle,
            user_ids=np.array(export.user_ids, dtype=str),
            has_embedding=export.has_embedding,
            user_vectors=export.user_vectors,
            embedding_versions=np.array(export.embedding_versions, dtype=str),
            generated_at=np.array(export.generated_at, dtype=str),
            preferences=np.array(export.preferences, dtype=str),
            item_ids=export.item_ids,
            item_categories=np.array(export.item_categories, dtype=str),
            item_popularity=export.item_popularity,
            item_freshness=export.item_freshness,
            item_vectors=export.item_vectors,
            item_has_embedding=export.item_has_embedding,
            default_vector=(
                default.vector.astype(np.float32) if default else np.zeros(0, np.float32)
            ),
            default_version=np.array(default.embedding_version if default else ""),
            default_generated_at=np.array(default.generated_at.isoformat() if default else ""),
            store_user_embeddings=np.array(export.store_user_embeddings),
        )


def load_export(path: Path) -> FeatureExport:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        default_version = str(arrays["default_version"])
        return FeatureExport(
            user_ids=[str(user) for user in arrays["user_ids"]],
            has_embedding=arrays["has_embedding"].astype(bool),
            user_vectors=arrays["user_vectors"].astype(np.float32),
            embedding_versions=[str(value) for value in arrays["embedding_versions"]],
            generated_at=[str(value) for value in arrays["generated_at"]],
            preferences=[str(value) for value in arrays["preferences"]],
            item_ids=arrays["item_ids"].astype(np.int64),
            item_categories=[str(value) for value in arrays["item_categories"]],
            item_popularity=arrays["item_popularity"].astype(np.float32),
            item_freshness=arrays["item_freshness"].astype(np.float32),
            item_vectors=arrays["item_vectors"].astype(np.float32),
            item_has_embedding=arrays["item_has_embedding"].astype(bool),
            default=(
                UserEmbedding(
                    arrays["default_vector"].astype(np.float32),
                    default_version,
                    dt.datetime.fromisoformat(str(arrays["default_generated_at"])),
                )
                if default_version
                else None
            ),
            store_user_embeddings=int(arrays["store_user_embeddings"]),
        )
    except (OSError, ValueError, KeyError) as error:
        raise BackupError(f"cannot read the feature export {path}: {error}") from error


async def import_features(
    export: FeatureExport, store: FeatureStore, *, recent: Sequence[Interaction] = ()
) -> None:
    """Writes everything through the port, then replays `recent` (the interactions inside the
    recent window) so users' recent items are there again."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def bounded(write: Awaitable[None]) -> None:
        async with limit:
            await write

    for start in range(0, len(export.item_ids), BATCH):
        rows = range(start, min(start + BATCH, len(export.item_ids)))
        await store.put_item_features(
            {
                int(export.item_ids[row]): ItemFeatures(
                    export.item_categories[row],
                    float(export.item_popularity[row]),
                    float(export.item_freshness[row]),
                    export.item_vectors[row] if export.item_has_embedding[row] else None,
                )
                for row in rows
            }
        )
    for start in range(0, len(export.user_ids), BATCH):
        writes: list[Awaitable[None]] = []
        for row in range(start, min(start + BATCH, len(export.user_ids))):
            user = export.user_ids[row]
            embedding = export.embedding(row)
            if embedding is not None:
                writes.append(store.put_user_embedding(user, embedding))
            if export.preferences[row]:
                writes.append(store.put_user_preferences(user, json.loads(export.preferences[row])))
        await asyncio.gather(*(bounded(write) for write in writes))
    if export.default is not None:
        await store.put_default_user_embedding(export.default)
    if recent:
        await store.record_events(recent)


def preload_snapshot(export: FeatureExport) -> tuple[FeatureSnapshot, int]:
    """The export as the feature snapshot an in-memory store preloads at every start (one
    embedding version for every user). Returns it and how many users without an embedding
    it leaves out (a snapshot holds a vector for every user)."""
    held = export.embedding_versions_held()
    if len(held) > 1:
        raise BackupError(
            f"the backup holds user embeddings of {len(held)} versions "
            f"({', '.join(sorted(held))}); an in-memory feature store preloads one: restore into "
            "a Redis store"
        )
    rows = [row for row in range(len(export.user_ids)) if export.has_embedding[row]]
    version = next(iter(held), export.default.embedding_version if export.default else "")
    times = [export.generated_at[row] for row in rows]
    generated_at = (
        max(dt.datetime.fromisoformat(moment) for moment in times)
        if times
        else (export.default.generated_at if export.default else dt.datetime.now(dt.UTC))
    )
    preferences = [
        json.loads(export.preferences[row]) if export.preferences[row] else {} for row in rows
    ]
    categories = sorted({name for values in preferences for name in values})
    matrix = np.zeros((len(rows), len(categories)), np.float32)
    position = {name: column for column, name in enumerate(categories)}
    for line, values in enumerate(preferences):
        for name, value in values.items():
            matrix[line, position[name]] = value
    user_vectors = export.user_vectors[rows]
    dimension = user_vectors.shape[1] if user_vectors.size else export.item_vectors.shape[1]
    default = (
        export.default.vector
        if export.default is not None
        else (user_vectors.mean(axis=0) if len(rows) else np.zeros(dimension, np.float32))
    )
    item_vectors = export.item_vectors
    if item_vectors.shape[1] != dimension:
        item_vectors = np.zeros((len(export.item_ids), dimension), np.float32)
    snapshot = FeatureSnapshot(
        embedding_version=version,
        generated_at=generated_at,
        user_ids=[export.user_ids[row] for row in rows],
        user_vectors=user_vectors.reshape(len(rows), dimension),
        preference_categories=categories,
        user_preferences=matrix,
        item_ids=export.item_ids,
        item_categories=export.item_categories,
        item_popularity=export.item_popularity,
        item_freshness=export.item_freshness,
        item_vectors=item_vectors,
        default_user_vector=np.asarray(default, np.float32),
    )
    return snapshot, len(export.user_ids) - len(rows)


def job_settings(settings: RecsysSettings) -> RecsysSettings:
    """The settings with Redis budgets of a batch job."""
    redis = settings.redis.model_copy(
        update={
            "socket_timeout_ms": max(settings.redis.socket_timeout_ms, JOB_TIMEOUT_MS),
            "connect_timeout_ms": max(settings.redis.connect_timeout_ms, JOB_TIMEOUT_MS),
        }
    )
    return settings.model_copy(update={"redis": redis})


def create_store(settings: RecsysSettings) -> FeatureStore:
    """The configured feature store, with a batch job's budgets."""
    from recsys.registry import create_adapter

    store: FeatureStore = create_adapter(
        "feature_store", settings.features.store, job_settings(settings)
    )
    return store


@dataclass(frozen=True)
class OpenedStore:
    store: FeatureStore
    # The users and items of the preloaded feature snapshot (none without one).
    preloaded_users: list[str]
    preloaded_items: list[int]


@contextlib.asynccontextmanager
async def opened_store(settings: RecsysSettings) -> AsyncIterator[OpenedStore]:
    """The configured feature store as a serving process sees it: an in-memory one preloaded
    with `features.preload_path` (less the erased users), as the process does at startup."""
    from recsys.data.erasures import erasure_records
    from recsys.data.features_file import load_features, load_into_store

    store = create_store(settings)
    try:
        users: list[str] = []
        items: list[int] = []
        path = settings.features.preload_path
        if path is not None:
            snapshot = await asyncio.to_thread(load_features, path)
            async with erasure_records(settings) as tombstones:
                await load_into_store(snapshot, store, metadata=tombstones)
            users, items = snapshot.user_ids, [int(item) for item in snapshot.item_ids]
        yield OpenedStore(store, users, items)
    finally:
        await store.close()
