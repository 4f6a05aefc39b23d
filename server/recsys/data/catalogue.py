"""A catalogue to serve: items, users and their interactions, from MovieLens files or the
synthetic generator, loaded into the platform's stores through its ports."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

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
        return sorted({item.category for item in self.items})


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
) -> None:
    """Writes items, users and interactions to the SQL store and, unless `features` is None,
    item features (without embeddings) to the feature store, in batches (`progress(stage,
    count)` after each). After `recsys train`, load the metadata only: the feature snapshot
    carries the item features the ranker was trained with."""
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
