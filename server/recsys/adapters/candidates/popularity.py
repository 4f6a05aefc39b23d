"""Candidates by popularity from the metadata store: trending overall (or in the requested
category), and popular in each category the user chose at onboarding."""

from __future__ import annotations

import asyncio

from recsys.domain.recommend.values import CandidatePool, Reason
from recsys.ports.candidates import CandidateRequest
from recsys.ports.counters import Counter, ItemCounters
from recsys.ports.metadata import MetadataRepository


class TrendingCandidates:
    """The most popular items, in the requested category when the request names one (unless
    `by_category` is false: the catalogue-wide list, as a ranking feature needs it)."""

    name = "popularity"

    def __init__(
        self, metadata: MetadataRepository, *, count: int, by_category: bool = True
    ) -> None:
        self.metadata = metadata
        self.count = count
        self.by_category = by_category

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        category = request.query.context.category if self.by_category else None
        ids = await self.metadata.popular_items(category=category, limit=self.count)
        return CandidatePool.ranked(ids, Reason.TRENDING)


class RisingCandidates:
    """What is trending right now: the items the event consumers' trending counters rank
    highest (a short half-life, `realtime.trending_half_life_minutes`). The metadata store's
    popularity stands in when the counters hold nothing yet (no events consumed) or the request
    names a category (the counters are not kept per category)."""

    name = "trending"

    def __init__(self, counters: ItemCounters, fallback: TrendingCandidates, *, count: int) -> None:
        self.counters = counters
        self.fallback = fallback
        self.count = count

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        if request.query.context.category is None:
            ids = await self.counters.top(Counter.TRENDING, self.count)
            if ids:
                return CandidatePool.ranked(ids, Reason.TRENDING)
        return await self.fallback.candidates(request)


class PopularInCategoryCandidates:
    """Popular items of the requested category, or else of each onboarding category."""

    name = "popular_in_category"

    def __init__(self, metadata: MetadataRepository, *, count: int) -> None:
        self.metadata = metadata
        self.count = count

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        chosen = chosen_categories(request)
        answers = await asyncio.gather(
            *(self.metadata.popular_items(category=name, limit=self.count) for name in chosen)
        )
        return CandidatePool.ranked(
            [item for ids in answers for item in ids], Reason.POPULAR_IN_CATEGORY
        )


def chosen_categories(request: CandidateRequest) -> list[str]:
    """What the user asked for: the request's category, or else the onboarding choices."""
    if request.query.context.category is not None:
        return [request.query.context.category]
    return list(request.profile.onboarding_categories) if request.profile else []
