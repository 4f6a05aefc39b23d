"""Deterministic synthetic data for tests and benchmarks of any size.

Clustered embeddings model a catalogue whose items group by taste (genres): item vectors lie
around a few hundred centres, so approximate indexes behave as they do on real embeddings
(uniform random vectors would make every ANN index look bad and every recall test meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from recsys.data.catalogue import Catalogue


def _normalize(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalized: npt.NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized


@dataclass(frozen=True)
class ClusteredEmbeddings:
    item_ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    centres: npt.NDArray[np.float32]
    spread: float
    seed: int

    def queries(self, count: int, *, seed: int | None = None) -> npt.NDArray[np.float32]:
        """Query vectors drawn like users: near a random centre, unit length."""
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        chosen = self.centres[rng.integers(0, len(self.centres), count)]
        noise = rng.normal(scale=self.spread, size=chosen.shape).astype(np.float32)
        return _normalize(chosen + noise)


def clustered_embeddings(
    item_count: int,
    dimension: int,
    *,
    clusters: int = 256,
    spread: float = 0.35,
    seed: int = 0,
    chunk: int = 262_144,
) -> ClusteredEmbeddings:
    """`item_count` unit vectors around `clusters` random centres; item ids 0..item_count-1.

    Generated in chunks, so 10M x 64 needs only the output array (2.5 GB) in memory."""
    rng = np.random.default_rng(seed)
    centres = _normalize(rng.normal(size=(clusters, dimension)).astype(np.float32))
    scale = spread / np.sqrt(dimension)
    vectors = np.empty((item_count, dimension), dtype=np.float32)
    for start in range(0, item_count, chunk):
        stop = min(item_count, start + chunk)
        assignment = rng.integers(0, clusters, stop - start)
        noise = rng.normal(scale=scale, size=(stop - start, dimension)).astype(np.float32)
        vectors[start:stop] = _normalize(centres[assignment] + noise)
    return ClusteredEmbeddings(
        item_ids=np.arange(item_count, dtype=np.int64),
        vectors=vectors,
        centres=centres,
        spread=scale,
        seed=seed,
    )


COUNTRIES = ("US", "DE", "FR", "GB", "JP", "BR", "CA", "IN")
# How many categories an item has: 1, 2 or 3.
CATEGORY_COUNT_SHARES = (0.5, 0.35, 0.15)


def extra_categories(
    item_category: npt.NDArray[np.int64],
    category_weights: npt.NDArray[np.float64],
    *,
    seed: int,
) -> list[frozenset[int]]:
    """Each item's category indexes: its own (`item_category`) plus up to two broader ones
    (of a lower index: drawn with more weight, so larger), by their weights, as a film's Drama
    next to its Film-Noir. The own category then stays the smallest of an item's (its primary)
    but where the draws make a broader one smaller, and the interactions, drawn by it, keep
    following the primary categories. From a generator seeded apart from the catalogue's."""
    rng = np.random.default_rng([seed, 1])
    item_count = len(item_category)
    extras = rng.choice(len(CATEGORY_COUNT_SHARES), size=item_count, p=CATEGORY_COUNT_SHARES)
    # Inverse transform over the categories before the own one: index < own, by weight.
    cumulative = np.cumsum(category_weights)
    broader_mass = np.where(item_category > 0, cumulative[np.maximum(item_category - 1, 0)], 0.0)
    draws = rng.random((item_count, 2)) * broader_mass[:, None]
    others = np.minimum(np.searchsorted(cumulative, draws, side="right"), item_category[:, None])
    return [
        frozenset((own, *(other for other in pair[:count] if other < own)))
        for own, count, pair in zip(
            item_category.tolist(), extras.tolist(), others.tolist(), strict=True
        )
    ]


_KINDS = ("view", "click", "like", "add_to_cart", "purchase")


def synthetic_catalogue(
    item_count: int,
    user_count: int,
    *,
    interactions_per_user: int = 20,
    category_count: int = 20,
    seed: int = 0,
) -> Catalogue:
    """A deterministic catalogue of any size: categories with skewed sizes, 3% adult items,
    10% regionally restricted items, power-law popularity, uniform freshness; users with ages
    (some minors), countries and a taste over categories; interactions drawn from the tastes
    (category by taste, item within it by popularity).

    Items have 1 to 3 categories: the one the interactions are drawn by, plus up to two
    broader ones (`extra_categories`, from a generator of their own so that every other draw is
    what it was with one category per item); the primary one is the catalogue's rule
    (`primary_categories`: the smallest of them)."""
    import datetime as dt

    from recsys.data.catalogue import Catalogue, primary_categories
    from recsys.domain.interactions import Interaction, InteractionKind
    from recsys.ports.metadata import ItemMetadata, UserProfile

    rng = np.random.default_rng(seed)
    categories = [f"category-{index:02d}" for index in range(category_count)]
    category_weights = 1.0 / np.arange(1, category_count + 1)
    category_weights /= category_weights.sum()
    item_category = rng.choice(category_count, size=item_count, p=category_weights)
    popularity = rng.pareto(1.5, item_count)
    popularity = (popularity / popularity.max()).astype(np.float32) if item_count else popularity
    adult = rng.random(item_count) < 0.03
    restricted = rng.random(item_count) < 0.10
    regions = rng.integers(0, len(COUNTRIES), size=(item_count, 2))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    categories_of = extra_categories(item_category, category_weights, seed=seed)
    labels_of = {
        item: tuple(sorted(categories[index] for index in indexes))
        for item, indexes in enumerate(categories_of)
    }
    primary = primary_categories(labels_of)
    items = [
        ItemMetadata(
            item_id=item,
            category=primary[item],
            categories=labels_of[item],
            adult=is_adult,
            available_regions=(
                tuple(sorted({COUNTRIES[first], COUNTRIES[second]})) if is_restricted else ()
            ),
            popularity=score,
        )
        for item, (is_adult, is_restricted, score, (first, second)) in enumerate(
            zip(adult.tolist(), restricted.tolist(), popularity.tolist(), regions.tolist(),
                strict=True)
        )
    ]  # fmt: skip
    freshness = dict(zip(range(item_count), rng.random(item_count).tolist(), strict=True))
    by_category = [np.flatnonzero(item_category == index) for index in range(category_count)]
    # Within a category, items are drawn by popularity: cumulative weights + searchsorted.
    cumulative = [np.cumsum(popularity[pool] + 1e-3) for pool in by_category]
    users: list[UserProfile] = []
    interactions: list[Interaction] = []
    kinds = [InteractionKind(kind) for kind in _KINDS]
    for user in range(user_count):
        taste = rng.dirichlet(np.full(category_count, 0.3))
        favourite = categories[int(np.argmax(taste))]
        users.append(
            UserProfile(
                f"user{user}",
                age=int(rng.integers(13, 81)),
                country=str(rng.choice(COUNTRIES)),
                onboarding_categories=(favourite,),
            )
        )
        chosen = rng.choice(category_count, size=interactions_per_user, p=taste)
        draws = rng.random(interactions_per_user)
        minutes = rng.integers(0, 500_000, interactions_per_user)
        kind_draws = rng.integers(0, len(kinds), interactions_per_user)
        for event in range(interactions_per_user):
            pool, weights = by_category[chosen[event]], cumulative[chosen[event]]
            if not len(pool):
                continue
            position = int(np.searchsorted(weights, draws[event] * weights[-1]))
            interactions.append(
                Interaction(
                    event_id=f"syn-{seed}-{user}-{event}",
                    user_id=f"user{user}",
                    item_id=int(pool[min(position, len(pool) - 1)]),
                    kind=kinds[int(kind_draws[event])],
                    value=1.0,
                    event_time=base + dt.timedelta(minutes=int(minutes[event])),
                )
            )
    return Catalogue(items, users, interactions, freshness=freshness)
