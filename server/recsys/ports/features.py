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
from recsys.errors import FieldViolation, InvalidArgument


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
    # The categories again as codes into `category_names` (from an ItemFeatureTable), so that
    # per-category values map without a Python step per item; None from `batch_from`.
    category_codes: npt.NDArray[np.int32] | None = None
    category_names: tuple[str, ...] = ()

    def category_values(self, values: Mapping[str, float]) -> npt.NDArray[np.float32]:
        """`values[category]` of each item (0 where its category has none), e.g. the user's
        affinity to each candidate's category."""
        if self.category_codes is None:
            return np.array([values.get(name, 0.0) for name in self.categories], np.float32)
        per_code = np.array([values.get(name, 0.0) for name in self.category_names], np.float32)
        return per_code[self.category_codes]


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
class _ItemColumns:
    """One immutable version of an ItemFeatureTable: rows sorted by item id."""

    item_ids: npt.NDArray[np.int64]
    popularity: npt.NDArray[np.float32]
    freshness: npt.NDArray[np.float32]
    # Index into the table's category names; 0 is "" (the default category).
    category_codes: npt.NDArray[np.int32]
    # Rows x dimension; zero rows for items without an embedding (dimension 0 when none has).
    embeddings: npt.NDArray[np.float32]
    has_embedding: npt.NDArray[np.bool_]


def _empty_columns() -> _ItemColumns:
    return _ItemColumns(
        np.empty(0, np.int64),
        np.empty(0, np.float32),
        np.empty(0, np.float32),
        np.empty(0, np.int32),
        np.empty((0, 0), np.float32),
        np.empty(0, bool),
    )


class ItemFeatureTable:
    """Item features as columns, for in-process reads of many items at once: `lookup` is a
    binary search of the sorted item ids and array takes (no Python step per item), with the
    defaults of `batch_from` where an item is absent.

    Updates rebuild the columns (copy on write: a merge of the sorted ids, new values winning)
    and swap them in whole, so a read sees the table before or after a put, never half of one,
    and a batch already returned never changes. A put costs O(table size): meant for bulk loads
    and refreshes of many items, not a write per event. Item embeddings share one dimension;
    an empty embedding counts as none, as in `batch_from`."""

    def __init__(self) -> None:
        self._columns = _empty_columns()
        # Category names by code; code 0 is the default, "".
        self._category_names: tuple[str, ...] = ("",)
        self._category_lookup = np.array(self._category_names, dtype=object)
        self._category_codes: dict[str, int] = {"": 0}

    def __len__(self) -> int:
        return len(self._columns.item_ids)

    @property
    def dimension(self) -> int:
        """The items' embedding dimension (0 while no item has an embedding)."""
        return int(self._columns.embeddings.shape[1])

    def lookup(self, item_ids: Sequence[int] | npt.NDArray[np.int64]) -> ItemFeatureBatch:
        """Features of the items, in the order asked (duplicates included)."""
        # Columns first: a put adds category names before it swaps the columns in, so the
        # names read next cover every code of these columns.
        columns, names, lookup = self._columns, self._category_names, self._category_lookup
        count = len(item_ids)
        stored = len(columns.item_ids)
        if stored == 0 or count == 0:
            return ItemFeatureBatch(
                [""] * count,
                np.zeros(count, np.float32),
                np.zeros(count, np.float32),
                None,
                np.zeros(count, bool),
                np.zeros(count, np.int32),
                names,
            )
        query = np.asarray(item_ids, dtype=np.int64)
        rows = np.searchsorted(columns.item_ids, query)
        # An id past the last stored one lands on `stored`: compare with the last row instead.
        np.minimum(rows, stored - 1, out=rows)
        found = columns.item_ids[rows] == query
        popularity = columns.popularity[rows]
        freshness = columns.freshness[rows]
        codes = columns.category_codes[rows]
        embeddings: npt.NDArray[np.float32] | None = None
        if columns.embeddings.shape[1] and bool((columns.has_embedding[rows] & found).any()):
            embeddings = columns.embeddings[rows]
        if not found.all():
            missing = ~found
            popularity[missing] = 0.0
            freshness[missing] = 0.0
            codes[missing] = 0
            if embeddings is not None:
                embeddings[missing] = 0.0
        categories: list[str] = lookup[codes].tolist()
        return ItemFeatureBatch(categories, popularity, freshness, embeddings, found, codes, names)

    def upsert(self, items: Mapping[int, ItemFeatures]) -> None:
        """Adds the items, replacing the features of those already present. Raises
        InvalidArgument for an embedding that is not a vector, or of another dimension than
        the ones of the items that stay."""
        if not items:
            return
        count = len(items)
        features = list(items.values())
        new_ids = np.fromiter((int(item_id) for item_id in items), np.int64, count)
        vectors = [_vector_of(item_id, value) for item_id, value in items.items()]
        dimensions = {vector.shape[0] for vector in vectors if vector is not None}
        if len(dimensions) > 1:
            raise _dimension_error(f"embeddings of dimensions {sorted(dimensions)} in one put")
        old = self._columns
        stored = len(old.item_ids)
        merged_ids = np.concatenate([old.item_ids, new_ids])
        # Stable: of equal ids the new row (after the old ones) sorts last and is kept.
        order = np.argsort(merged_ids, kind="stable")
        sorted_ids = merged_ids[order]
        last = np.ones(len(sorted_ids), bool)
        last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
        keep = order[last]
        kept_old = keep[keep < stored]
        old_embedded = bool(old.has_embedding[kept_old].any())
        dimension = old.embeddings.shape[1] if old_embedded else 0
        if dimensions:
            (new_dimension,) = dimensions
            if old_embedded and new_dimension != dimension:
                raise _dimension_error(
                    f"embeddings of dimension {new_dimension}; the table's are {dimension}"
                )
            dimension = new_dimension
        new_embeddings = np.zeros((count, dimension), np.float32)
        for row, vector in enumerate(vectors):
            if vector is not None:
                new_embeddings[row] = vector
        old_embeddings = (
            old.embeddings
            if old.embeddings.shape[1] == dimension
            else np.zeros((stored, dimension), np.float32)
        )
        codes = np.fromiter(
            (self._category_code(value.category) for value in features), np.int32, count
        )
        self._columns = _ItemColumns(
            sorted_ids[last],
            np.concatenate(
                [old.popularity, np.fromiter((v.popularity for v in features), np.float32, count)]
            )[keep],
            np.concatenate(
                [old.freshness, np.fromiter((v.freshness for v in features), np.float32, count)]
            )[keep],
            np.concatenate([old.category_codes, codes])[keep],
            np.concatenate([old_embeddings, new_embeddings])[keep],
            np.concatenate(
                [old.has_embedding, np.array([vector is not None for vector in vectors], bool)]
            )[keep],
        )

    def _category_code(self, name: str) -> int:
        code = self._category_codes.get(name)
        if code is None:
            code = len(self._category_names)
            self._category_codes[name] = code
            # New tuples and arrays: batches already returned keep the names they were given.
            self._category_names = (*self._category_names, name)
            self._category_lookup = np.array(self._category_names, dtype=object)
        return code


def _vector_of(item_id: int, features: ItemFeatures) -> npt.NDArray[np.float32] | None:
    """The item's embedding as float32, None when it has none (or an empty one)."""
    if features.embedding is None:
        return None
    vector = np.asarray(features.embedding, np.float32)
    if vector.ndim != 1:
        raise InvalidArgument(
            [
                FieldViolation(
                    f"items[{item_id}].embedding", f"must be a vector, not of shape {vector.shape}"
                )
            ]
        )
    return vector if vector.shape[0] else None


def _dimension_error(description: str) -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("items.embedding", description, reason="EMBEDDING_DIMENSION_MISMATCH")]
    )


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
