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
    """Exclusions (history, the request's), the requested category (items having it among any
    of theirs), privacy filters, then diversity (over every category of an item); at most
    MAX_LIMIT items (what a request may ask for and the caches hold). Each item answers with
    its primary category."""
    ids = [item for item in pool.item_ids if item not in excluded]
    category = query.context.category
    if category is not None:
        ids = [
            item for item in ids if item in metadata and category in metadata[item].all_categories
        ]
    # The request's country, else the profile's, else the deployment's (a regional one).
    country = (
        query.context.country or (profile.country if profile else None) or (config.default_country)
    )
    ids = privacy_filter(ids, metadata, profile, country)
    if config.diversity_enabled:
        ids = diversify(
            ids,
            {item: metadata[item].all_categories for item in ids},
            max_per_category=config.diversity_max_per_category,
            window=config.diversity_window,
        )
    score_of = dict(zip(pool.item_ids, pool.scores, strict=True))
    reason_of = pool.reason_of()
    return tuple(
        RecommendedItem(item, float(score_of[item]), metadata[item].category, reason_of[item])
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
    """Scores a cold-start pool (popularity + category match: any of the item's categories is
    wanted + similar to liked) and puts it in rank order."""
    scores = []
    for item, reason in zip(pool.item_ids, pool.reasons, strict=True):
        known = metadata.get(item)
        score = known.popularity if known is not None else 0.0
        if known is not None and not wanted.isdisjoint(known.all_categories):
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
