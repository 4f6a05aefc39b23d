"""A catalogue to serve: items, users and their interactions, from MovieLens files or the
synthetic generator, loaded into the platform's stores through its ports."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from recsys.domain.interactions import Interaction
from recsys.ports.features import FeatureStore, ItemFeatures
from recsys.ports.metadata import ItemMetadata, MetadataRepository, UserProfile


@dataclass
class Catalogue:
    items: list[ItemMetadata]
    users: list[UserProfile]
    interactions: list[Interaction]
    titles: dict[int, str] = field(default_factory=dict)
    # Item id -> freshness in [0, 1] (1: newest).
    freshness: dict[int, float] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        """Every category of the catalogue's items (primary or not), by name."""
        return sorted({category for item in self.items for category in item.all_categories})

    @property
    def user_ids(self) -> list[str]:
        """Every user the catalogue holds data of: profiles, then interactions, each once."""
        profiles = (user.user_id for user in self.users)
        events = (event.user_id for event in self.interactions)
        return list(dict.fromkeys([*profiles, *events]))

    def without_users(self, user_ids: Collection[str]) -> Catalogue:
        """The catalogue without these users' profiles and interactions (items stay)."""
        if not user_ids:
            return self
        left_out = set(user_ids)
        return replace(
            self,
            users=[user for user in self.users if user.user_id not in left_out],
            interactions=[event for event in self.interactions if event.user_id not in left_out],
        )


@dataclass(frozen=True)
class Skipped:
    """What a loader left out because the users were erased (their tombstones)."""

    users: int = 0
    profiles: int = 0
    interactions: int = 0

    def describe(self) -> str:
        return (
            f"skipped {self.users} erased users ({self.profiles} profiles, "
            f"{self.interactions} interactions)"
        )


async def erased_users_of(catalogue: Catalogue, metadata: MetadataRepository) -> set[str]:
    """The catalogue's users that were erased: loaders and training leave them out."""
    return await metadata.erased_user_ids(catalogue.user_ids)


def skip_erased(catalogue: Catalogue, erased: Collection[str]) -> tuple[Catalogue, Skipped]:
    kept = catalogue.without_users(erased)
    return kept, Skipped(
        users=len(erased),
        profiles=len(catalogue.users) - len(kept.users),
        interactions=len(catalogue.interactions) - len(kept.interactions),
    )


# The category of an item without any other (a MovieLens item with no genre).
UNKNOWN_CATEGORY = "unknown"


def categories_from(genres: Iterable[str]) -> tuple[str, ...]:
    """An item's categories from its genres: each once, by name; "unknown" only when the item
    has no other."""
    named = {genre for genre in genres if genre and genre != UNKNOWN_CATEGORY}
    return tuple(sorted(named)) if named else (UNKNOWN_CATEGORY,)


def primary_categories(genres_by_item: Mapping[int, Collection[str]]) -> dict[int, str]:
    """Each item's primary category: of its genres, the one with the fewest items in the
    catalogue (the most specific: Pulp Fiction is Crime rather than Drama), ties by name;
    "unknown" only for an item without any other. Independent of the order genres or items
    are listed in (MovieLens lists genres alphabetically, which made Action and Comedy win by
    spelling)."""
    named = {
        item: set(categories_from(genres)) - {UNKNOWN_CATEGORY}
        for item, genres in genres_by_item.items()
    }
    sizes = Counter(genre for genres in named.values() for genre in genres)
    return {
        item: min(genres, key=lambda genre: (sizes[genre], genre)) if genres else UNKNOWN_CATEGORY
        for item, genres in named.items()
    }


def popularity_from(interactions: list[Interaction], item_ids: list[int]) -> dict[int, float]:
    """Interaction counts scaled to [0, 1] (log scale, so the long tail is not all zero)."""
    import math

    counts = dict.fromkeys(item_ids, 0)
    for event in interactions:
        if event.item_id in counts:
            counts[event.item_id] += 1
    top = max(counts.values(), default=0)
    if not top:
        return dict.fromkeys(item_ids, 0.0)
    return {item: math.log1p(count) / math.log1p(top) for item, count in counts.items()}


def freshness_from(released: dict[int, dt.datetime | None]) -> dict[int, float]:
    known = [when for when in released.values() if when is not None]
    if not known:
        return dict.fromkeys(released, 0.0)
    oldest, newest = min(known), max(known)
    span = (newest - oldest).total_seconds() or 1.0
    return {
        item: ((when - oldest).total_seconds() / span) if when is not None else 0.0
        for item, when in released.items()
    }


async def load_catalogue(
    catalogue: Catalogue,
    *,
    metadata: MetadataRepository,
    features: FeatureStore | None,
    batch: int = 5_000,
    progress: Callable[[str, int], None] | None = None,
) -> Skipped:
    """Writes items, users and interactions to the SQL store and, unless `features` is None,
    item features (without embeddings) to the feature store, in batches (`progress(stage,
    count)` after each). After `recsys train`, load the metadata only: the feature snapshot
    carries the item features the ranker was trained with.

    Erased users (tombstones in `metadata`) are left out: their profiles and interactions are
    not written again. Returns what was left out."""
    catalogue, skipped = skip_erased(catalogue, await erased_users_of(catalogue, metadata))
    if progress and skipped.profiles:
        progress("users", skipped.profiles)
    if progress and skipped.interactions:
        progress("interactions", skipped.interactions)
    for start in range(0, len(catalogue.items), batch):
        chunk = catalogue.items[start : start + batch]
        await metadata.upsert_items(chunk)
        if features is None:
            if progress:
                progress("items", len(chunk))
            continue
        await features.put_item_features(
            {
                item.item_id: ItemFeatures(
                    item.category, item.popularity, catalogue.freshness.get(item.item_id, 0.0)
                )
                for item in chunk
            }
        )
        if progress:
            progress("items", len(chunk))
    for start in range(0, len(catalogue.users), batch):
        chunk_users = catalogue.users[start : start + batch]
        await metadata.upsert_users(chunk_users)
        if progress:
            progress("users", len(chunk_users))
    for start in range(0, len(catalogue.interactions), batch):
        chunk_events = catalogue.interactions[start : start + batch]
        await metadata.record_interactions(chunk_events)
        if progress:
            progress("interactions", len(chunk_events))
    return skipped
