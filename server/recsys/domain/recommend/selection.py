"""Selection: from a ranked pool to the items a user may see, in order (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping

from recsys.domain.ordering import ranked_order
from recsys.domain.policies import diversify, privacy_filter
from recsys.domain.recommend.values import (
    MAX_LIMIT,
    CandidatePool,
    Reason,
    RecommendConfig,
    RecommendedItem,
)
from recsys.domain.requests import RecommendQuery
from recsys.ports.metadata import ItemMetadata, UserProfile


def select(
    pool: CandidatePool,
    *,
    query: RecommendQuery,
    profile: UserProfile | None,
    excluded: frozenset[int],
    metadata: Mapping[int, ItemMetadata],
    config: RecommendConfig,
) -> tuple[RecommendedItem, ...]:
    """Exclusions (history, the request's), the requested category, privacy filters, then
    diversity; at most MAX_LIMIT items (what a request may ask for and the caches hold)."""
    ids = [item for item in pool.item_ids if item not in excluded]
    category = query.context.category
    if category is not None:
        ids = [item for item in ids if item in metadata and metadata[item].category == category]
    # The request's country, else the profile's, else the deployment's (a regional one).
    country = (
        query.context.country or (profile.country if profile else None) or (config.default_country)
    )
    ids = privacy_filter(ids, metadata, profile, country)
    categories = {item: metadata[item].category for item in ids}
    if config.diversity_enabled:
        ids = diversify(
            ids,
            categories,
            max_per_category=config.diversity_max_per_category,
            window=config.diversity_window,
        )
    score_of = dict(zip(pool.item_ids, pool.scores, strict=True))
    reason_of = pool.reason_of()
    return tuple(
        RecommendedItem(item, float(score_of[item]), categories[item], reason_of[item])
        for item in ids[:MAX_LIMIT]
    )


def merge_pools(pools: list[CandidatePool]) -> CandidatePool:
    """One pool from several, in order; an item found twice keeps its first reason."""
    reasons: dict[int, Reason] = {}
    for pool in pools:
        for item, reason in zip(pool.item_ids, pool.reasons, strict=True):
            reasons.setdefault(item, reason)
    return CandidatePool(tuple(reasons), (0.0,) * len(reasons), tuple(reasons.values()))


# Seed Simulation 2: popularity plus a match with what the user asked for.
CATEGORY_MATCH_BONUS = 1.0
SIMILAR_TO_LIKED_BONUS = 0.5


def cold_start_ranking(
    pool: CandidatePool, metadata: Mapping[int, ItemMetadata], wanted: set[str]
) -> CandidatePool:
    """Scores a cold-start pool (popularity + category match + similar to liked) and puts it
    in rank order."""
    scores = []
    for item, reason in zip(pool.item_ids, pool.reasons, strict=True):
        known = metadata.get(item)
        score = known.popularity if known is not None else 0.0
        if known is not None and known.category in wanted:
            score += CATEGORY_MATCH_BONUS
        if reason is Reason.SIMILAR_TO_LIKED:
            score += SIMILAR_TO_LIKED_BONUS
        scores.append(score)
    order = ranked_order(pool.item_ids, scores).tolist()
    return CandidatePool(
        tuple(pool.item_ids[i] for i in order),
        tuple(scores[i] for i in order),
        tuple(pool.reasons[i] for i in order),
    )
