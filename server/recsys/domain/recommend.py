"""The Recommend pipeline (seed Journeys 1 and 2, Simulations 1, 2 and 6).

rate limit -> response cache -> pre-computed results -> user features (timeout -> defaults)
-> cold start or retrieval (version mismatch or outage -> popularity) -> ranking (breaker ->
fallbacks) -> exclusions -> privacy filters -> diversity -> top N -> cache -> answer.
Every degradation is flagged in the answer and counted; only bad input and the rate limit are
errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from recsys.domain.ordering import ranked_order
from recsys.domain.policies import diversify, privacy_filter
from recsys.domain.ranking import Backend
from recsys.domain.requests import RecommendQuery
from recsys.domain.retrieval import RetrievalQuery
from recsys.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    RecsysError,
    ResourceExhausted,
    Unavailable,
)
from recsys.observability.metrics import RecommendMetrics
from recsys.ports.cache import CachedItem, CachedRecommendations, RecommendationCache
from recsys.ports.candidates import CandidateSource, Scorer
from recsys.ports.features import FeatureStore, UserEmbedding, UserFeatures
from recsys.ports.metadata import ItemMetadata, MetadataRepository, UserProfile
from recsys.ports.rate_limit import RateLimiter
from recsys.settings import RecommendSettings

logger = logging.getLogger(__name__)
T = TypeVar("T")

PERSONALIZED = "personalized"
SIMILAR = "similar_to_liked"
POPULAR_IN_CATEGORY = "popular_in_category"
TRENDING = "trending"
CACHE_LIMIT = 100  # the most a request can ask for: caches hold this many


@dataclass
class Degradation:
    served_from_cache: bool = False
    served_from_precomputed: bool = False
    fallback_ranking: bool = False
    partial_retrieval: bool = False
    failed_shard_ids: tuple[int, ...] = ()
    default_features: bool = False
    popularity_candidates: bool = False

    def kinds(self) -> list[str]:
        return [
            name
            for name in (
                "fallback_ranking",
                "partial_retrieval",
                "default_features",
                "popularity_candidates",
            )
            if getattr(self, name)
        ]


@dataclass
class Recommendation:
    items: list[CachedItem]
    model_version: str = ""
    index_version: str = ""
    cold_start: bool = False
    explanation: str = ""
    ranking_backend: str = ""
    degradation: Degradation = field(default_factory=Degradation)


@dataclass
class _Candidates:
    item_ids: list[int]
    scores: list[float]
    reasons: dict[int, str]


class RecommendPipeline:
    def __init__(
        self,
        settings: RecommendSettings,
        *,
        features: FeatureStore,
        metadata: MetadataRepository,
        cache: RecommendationCache,
        candidates: CandidateSource,
        scorer: Scorer,
        limiter: RateLimiter | None = None,
        metrics: RecommendMetrics | None = None,
        rate_limit_timeout_ms: int = 100,
        rate_limit_fail_open: bool = True,
    ) -> None:
        self.settings = settings
        self.features = features
        self.metadata = metadata
        self.cache = cache
        self.candidates = candidates
        self.scorer = scorer
        self.limiter = limiter
        self.metrics = metrics
        self.rate_limit_timeout_ms = rate_limit_timeout_ms
        self.rate_limit_fail_open = rate_limit_fail_open
        self.default_embedding: UserEmbedding | None = None

    # ------------------------------------------------------------------ helpers

    @asynccontextmanager
    async def _stage(self, name: str) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.metrics is not None:
                self.metrics.stage_seconds.labels(name).observe(time.perf_counter() - started)

    async def _within(self, call: Awaitable[T], timeout_ms: int, what: str) -> T:
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                return await call
        except TimeoutError:
            raise DeadlineExceeded(f"{what} took longer than {timeout_ms} ms") from None

    async def refresh_default_embedding(self) -> None:
        try:
            self.default_embedding = await self.features.get_default_user_embedding()
        except RecsysError as error:
            logger.warning("default features not refreshed", extra={"error": error.message})

    # ------------------------------------------------------------------ the pipeline

    async def recommend(self, query: RecommendQuery) -> Recommendation:
        started = time.perf_counter()
        try:
            answer = await self._recommend(query)
            # Caches keep up to 100 items; this request gets the `limit` it asked for.
            answer.items = answer.items[: query.limit]
        finally:
            if self.metrics is not None:
                self.metrics.total_seconds.observe(time.perf_counter() - started)
        if self.metrics is not None:
            self.metrics.requests.inc()
            if answer.cold_start:
                self.metrics.cold_start.inc()
            if not answer.items:
                self.metrics.empty.inc()
            for kind in answer.degradation.kinds():
                self.metrics.degraded.labels(kind).inc()
        return answer

    async def _recommend(self, query: RecommendQuery) -> Recommendation:
        await self._rate_limit(query.user_id)
        cacheable = query.context.category is None and not query.excluded_item_ids
        if cacheable:
            cached = await self._cached("recommendations", query)
            if cached is not None:
                if self.metrics is not None:
                    self.metrics.cache_hits.labels("response_cache").inc()
                return self._from_cache(cached, query.limit, served_from_cache=True)
        profile, consumed = await self._profile_and_history(query.user_id)
        if profile is not None and profile.deleted:
            # An erased user: nothing personal remains; serve what anyone would see.
            profile = None
        degradation = Degradation()
        precomputed = await self._cached("precomputed", query) if cacheable else None
        if precomputed is not None:
            if self.metrics is not None:
                self.metrics.cache_hits.labels("precomputed").inc()
            degradation.served_from_precomputed = True
            pool = _Candidates(
                [item.item_id for item in precomputed.items],
                [item.score for item in precomputed.items],
                {item.item_id: item.reason or PERSONALIZED for item in precomputed.items},
            )
            answer = await self._finish(
                query, pool, profile, consumed, degradation, index_version=precomputed.index_version
            )
            answer.model_version = answer.model_version or precomputed.model_version
            return answer
        user = await self._user_features(query.user_id, degradation)
        embedding = user.embedding if user is not None else self.default_embedding
        if user is not None:
            consumed = consumed | set(user.recent_item_ids)  # realtime: the last 30 minutes
        if user is not None and user.embedding is None and not consumed:
            return await self._cold_start(query, profile, consumed, degradation)
        if embedding is None:
            embedding = self.default_embedding
            degradation.default_features = embedding is not None
        pool, index_version = await self._retrieve(query, embedding, consumed, degradation)
        answer = await self._finish(query, pool, profile, consumed, degradation, index_version)
        # A degraded answer is not cached: the cache would serve it for minutes after the
        # dependency recovered, and without its flags.
        if cacheable and answer.items and not answer.degradation.kinds():
            await self._store(query, answer)
        return answer

    async def _rate_limit(self, user_id: str) -> None:
        if self.limiter is None or not self.settings.rate_limit_enabled:
            return
        async with self._stage("rate_limit"):
            try:
                decision = await self._within(
                    self.limiter.hit(user_id), self.rate_limit_timeout_ms, "the rate limiter"
                )
            except (Unavailable, DeadlineExceeded) as error:
                if not self.rate_limit_fail_open:
                    raise Unavailable(
                        "the rate limiter cannot be reached", reason="RATE_LIMITER_DOWN"
                    ) from error
                # The limiter's store is down: serve (fail open) rather than refuse everyone.
                logger.warning("rate limiter unavailable", extra={"error": error.message})
                if self.metrics is not None:
                    self.metrics.rate_limit_bypassed.inc()
                return
        if not decision.allowed:
            if self.metrics is not None:
                self.metrics.rate_limited.inc()
            raise ResourceExhausted(
                f"user {user_id} exceeded {self.limiter.limit} requests per "
                f"{self.limiter.window_seconds} s",
                retry_after_seconds=decision.retry_after_seconds,
                reason="RATE_LIMITED",
            )

    async def _cached(self, kind: str, query: RecommendQuery) -> CachedRecommendations | None:
        async with self._stage(f"cache_{kind}"):
            try:
                return await self._within(
                    self.cache.get(kind, query.user_id, query.surface),
                    self.settings.cache_timeout_ms,
                    "the cache",
                )
            except (Unavailable, DeadlineExceeded) as error:
                logger.warning("cache unavailable", extra={"error": error.message})
                return None

    async def _store(self, query: RecommendQuery, answer: Recommendation) -> None:
        value = CachedRecommendations(
            items=tuple(answer.items),
            model_version=answer.model_version,
            index_version=answer.index_version,
            cold_start=answer.cold_start,
            explanation=answer.explanation,
            ranking_backend=answer.ranking_backend,
        )
        try:
            await self._within(
                self.cache.put(
                    "recommendations",
                    query.user_id,
                    query.surface,
                    value,
                    self.settings.cache_ttl_seconds,
                ),
                self.settings.cache_timeout_ms,
                "the cache",
            )
        except (Unavailable, DeadlineExceeded) as error:
            logger.warning("result not cached", extra={"error": error.message})

    def _from_cache(
        self, cached: CachedRecommendations, limit: int, *, served_from_cache: bool
    ) -> Recommendation:
        return Recommendation(
            items=list(cached.items),
            model_version=cached.model_version,
            index_version=cached.index_version,
            cold_start=cached.cold_start,
            explanation=cached.explanation,
            ranking_backend=cached.ranking_backend,
            degradation=Degradation(served_from_cache=served_from_cache),
        )

    async def _profile_and_history(self, user_id: str) -> tuple[UserProfile | None, set[int]]:
        async with self._stage("profile"):
            try:
                profile, consumed = await asyncio.gather(
                    self.metadata.get_user(user_id), self.metadata.consumed_item_ids(user_id)
                )
                return profile, consumed
            except (Unavailable, DeadlineExceeded) as error:
                logger.warning("metadata unavailable", extra={"error": error.message})
                return None, set()

    async def _user_features(self, user_id: str, degradation: Degradation) -> UserFeatures | None:
        """The user's features, or None (and `default_features`) when the store is slow or
        down: the default embedding then stands in."""
        async with self._stage("features"):
            try:
                return await self._within(
                    self.features.get_user_features(user_id),
                    self.settings.feature_timeout_ms,
                    "user features",
                )
            except (Unavailable, DeadlineExceeded) as error:
                logger.warning("user features unavailable", extra={"error": error.message})
                degradation.default_features = self.default_embedding is not None
                return None

    async def _retrieve(
        self,
        query: RecommendQuery,
        embedding: UserEmbedding | None,
        consumed: set[int],
        degradation: Degradation,
    ) -> tuple[_Candidates, str]:
        if embedding is not None:
            async with self._stage("retrieval"):
                try:
                    result = await self.candidates.retrieve(
                        RetrievalQuery(
                            vector=embedding.vector,
                            embedding_version=embedding.embedding_version,
                            k=self.settings.candidates,
                            excluded_item_ids=frozenset(query.excluded_item_ids),
                        )
                    )
                except (FailedPrecondition, Unavailable, DeadlineExceeded) as error:
                    # Seed Simulation 6 (stale embeddings) and retrieval outages: popularity.
                    logger.warning("retrieval unavailable", extra={"error": error.message})
                else:
                    degradation.partial_retrieval = result.partial
                    degradation.failed_shard_ids = result.failed_shard_ids
                    if len(result.item_ids):
                        ids = result.item_ids.tolist()
                        return (
                            _Candidates(
                                ids, result.scores.tolist(), dict.fromkeys(ids, PERSONALIZED)
                            ),
                            result.index_version,
                        )
        degradation.popularity_candidates = True
        return await self._popular(query.context.category, self.settings.candidates), ""

    async def _popular(self, category: str | None, limit: int) -> _Candidates:
        async with self._stage("popularity"):
            try:
                ids = await self.metadata.popular_items(category=category, limit=limit)
            except (Unavailable, DeadlineExceeded) as error:
                logger.warning("popular items unavailable", extra={"error": error.message})
                ids = []
        count = max(1, len(ids))
        return _Candidates(
            ids, [1.0 - index / count for index in range(len(ids))], dict.fromkeys(ids, TRENDING)
        )

    async def _cold_start(
        self,
        query: RecommendQuery,
        profile: UserProfile | None,
        consumed: set[int],
        degradation: Degradation,
    ) -> Recommendation:
        """Seed Simulation 2: onboarding categories, items similar to the liked ones, trending;
        about 250 candidates; popularity + category match."""
        per_source = self.settings.cold_start_candidates_per_source
        chosen = list(profile.onboarding_categories) if profile else []
        if query.context.category is not None:
            chosen = [query.context.category]
        sources = [self._popular(category, per_source) for category in chosen]
        sources.append(self._popular(query.context.category, per_source))
        pools = await asyncio.gather(*sources)
        reasons: dict[int, str] = {}
        for category_pool in pools[:-1]:
            for item in category_pool.item_ids:
                reasons.setdefault(item, POPULAR_IN_CATEGORY)
        for item in pools[-1].item_ids:
            reasons.setdefault(item, TRENDING)
        for item in await self._similar_to_liked(profile):
            reasons.setdefault(item, SIMILAR)
        ids = list(reasons)
        metadata = await self._item_metadata(ids)
        wanted = set(chosen)
        scores = [
            (metadata[item].popularity if item in metadata else 0.0)
            + (1.0 if item in metadata and metadata[item].category in wanted else 0.0)
            + (0.5 if reasons[item] == SIMILAR else 0.0)
            for item in ids
        ]
        order = ranked_order(ids, scores).tolist()
        pool = _Candidates([ids[i] for i in order], [scores[i] for i in order], reasons)
        answer = self._select(query, pool, profile, consumed, metadata)
        answer.cold_start = True
        answer.explanation = "Based on your preferences"
        answer.ranking_backend = Backend.RULE_FALLBACK.value
        answer.degradation = degradation
        return answer

    async def _similar_to_liked(self, profile: UserProfile | None) -> list[int]:
        if profile is None or not profile.liked_item_ids:
            return []
        try:
            liked = await self.features.get_item_features(list(profile.liked_item_ids))
        except RecsysError:
            return []
        if liked.embeddings is None:
            return []
        found: list[int] = []
        for row in np.flatnonzero(liked.found):
            vector = liked.embeddings[row]
            version = self.default_embedding.embedding_version if self.default_embedding else ""
            try:
                result = await self.candidates.retrieve(
                    RetrievalQuery(
                        vector=vector,
                        embedding_version=version,
                        k=self.settings.cold_start_similar_per_liked_item + 1,
                        excluded_item_ids=frozenset(profile.liked_item_ids),
                    )
                )
            except RecsysError:
                continue
            found.extend(result.item_ids.tolist())
        return found

    async def _item_metadata(self, item_ids: list[int]) -> dict[int, ItemMetadata]:
        async with self._stage("item_metadata"):
            try:
                return await self.metadata.get_items(item_ids)
            except (Unavailable, DeadlineExceeded) as error:
                logger.warning("item metadata unavailable", extra={"error": error.message})
                return {}

    async def _finish(
        self,
        query: RecommendQuery,
        pool: _Candidates,
        profile: UserProfile | None,
        consumed: set[int],
        degradation: Degradation,
        index_version: str,
    ) -> Recommendation:
        excluded = consumed | set(query.excluded_item_ids)
        keep = [index for index, item in enumerate(pool.item_ids) if item not in excluded]
        item_ids = np.array([pool.item_ids[i] for i in keep], dtype=np.int64)
        scores = np.array([pool.scores[i] for i in keep], dtype=np.float32)
        model_version, backend = "", ""
        if len(item_ids):
            async with self._stage("ranking"):
                scored = await self.scorer.score(query.user_id, item_ids, scores, query.context)
            model_version, backend = scored.model_version, scored.backend.value
            degradation.fallback_ranking = scored.backend is not Backend.MODEL
            degradation.default_features |= scored.default_features
            pool = _Candidates(scored.item_ids.tolist(), scored.scores.tolist(), pool.reasons)
        else:
            pool = _Candidates([], [], pool.reasons)
        answer = await self._select_in_chunks(query, pool, profile, consumed)
        answer.model_version = model_version
        answer.index_version = index_version
        answer.ranking_backend = backend
        answer.degradation = degradation
        if not answer.items and not degradation.popularity_candidates:
            # Empty after filtering: trending instead of nothing.
            degradation.popularity_candidates = True
            trending = await self._popular(query.context.category, self.settings.candidates)
            fallback_metadata = await self._item_metadata(trending.item_ids)
            answer = replace(
                self._select(query, trending, profile, consumed, fallback_metadata),
                degradation=degradation,
                ranking_backend=Backend.RULE_FALLBACK.value,
            )
        answer.explanation = answer.explanation or (
            "Popular right now" if degradation.popularity_candidates else "Picked for you"
        )
        return answer

    async def _select_in_chunks(
        self,
        query: RecommendQuery,
        pool: _Candidates,
        profile: UserProfile | None,
        consumed: set[int],
    ) -> Recommendation:
        """Filters the ranked pool reading item metadata for a prefix only (300 first, then
        twice as many) until enough items survive for the cache, instead of all 1000."""
        size = min(len(pool.item_ids), 300)
        metadata: dict[int, ItemMetadata] = {}
        fetched = 0
        while True:
            metadata.update(await self._item_metadata(pool.item_ids[fetched:size]))
            fetched = size
            prefix = _Candidates(pool.item_ids[:size], pool.scores[:size], pool.reasons)
            answer = self._select(query, prefix, profile, consumed, metadata)
            if len(answer.items) >= CACHE_LIMIT or size >= len(pool.item_ids):
                return answer
            size = min(len(pool.item_ids), size * 2)

    def _select(
        self,
        query: RecommendQuery,
        pool: _Candidates,
        profile: UserProfile | None,
        consumed: set[int],
        metadata: dict[int, ItemMetadata],
    ) -> Recommendation:
        excluded = consumed | set(query.excluded_item_ids)
        score_of = dict(zip(pool.item_ids, pool.scores, strict=True))
        ids = [item for item in pool.item_ids if item not in excluded]
        if query.context.category is not None:
            ids = [
                i for i in ids if i in metadata and metadata[i].category == query.context.category
            ]
        ids = privacy_filter(ids, metadata, profile, query.context.country)
        categories = {item: metadata[item].category for item in ids}
        if self.settings.diversity_enabled:
            ids = diversify(
                ids,
                categories,
                max_per_category=self.settings.diversity_max_per_category,
                window=self.settings.diversity_window,
            )
        ids = ids[:CACHE_LIMIT]
        items = [
            CachedItem(
                item_id=item,
                score=float(score_of[item]),
                category=categories[item],
                reason=pool.reasons.get(item, PERSONALIZED),
                reason_text=_reason_text(pool.reasons.get(item, PERSONALIZED), categories[item]),
            )
            for item in ids
        ]
        return Recommendation(items=items)


def _reason_text(reason: str, category: str) -> str:
    return {
        PERSONALIZED: "Matches your taste",
        SIMILAR: "Similar to items you liked",
        POPULAR_IN_CATEGORY: f"Popular in {category}",
        TRENDING: "Trending now",
    }.get(reason, "")
