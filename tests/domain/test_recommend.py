"""Every branch of the Recommend pipeline with scripted fakes (pure logic, no servers), the way
tests/domain/test_ranking.py drives the ranking chain."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from recsys.adapters.candidates.similar import SimilarToLikedCandidates
from recsys.deadlines import request_deadline
from recsys.domain.ranking import Backend
from recsys.domain.recommend.pipeline import CandidateSources, RecommendPipeline
from recsys.domain.recommend.values import (
    CandidatePool,
    Flag,
    Reason,
    RecommendConfig,
)
from recsys.domain.requests import RecommendQuery, RequestContext
from recsys.domain.retrieval import RetrievalQuery, RetrievalResult
from recsys.domain.scoring import ScoredCandidates
from recsys.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from recsys.ports.cache import CachedItem, CachedRecommendations
from recsys.ports.candidates import CandidateRequest
from recsys.ports.features import UserEmbedding, UserFeatures, batch_from
from recsys.ports.metadata import ItemMetadata, UserProfile
from recsys.ports.rate_limit import RateDecision

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
VECTOR = np.ones(4, np.float32)


def embedding(version: str = "e1") -> UserEmbedding:
    return UserEmbedding(VECTOR, version, NOW)


class Failing:
    """A scripted failure: raise `error`, or sleep past any budget."""

    def __init__(self, error: Exception | None = None, *, sleep: float = 0.0) -> None:
        self.error, self.sleep = error, sleep

    async def __call__(self) -> None:
        if self.sleep:
            await asyncio.sleep(self.sleep)
        if self.error is not None:
            raise self.error


@dataclass
class Features:
    user: UserFeatures | None = None
    default: UserEmbedding | None = None
    failure: Failing | None = None

    async def get_user_features(self, user_id: str) -> UserFeatures:
        if self.failure is not None:
            await self.failure()
        return self.user or UserFeatures(None, {}, ())

    async def get_default_user_embedding(self) -> UserEmbedding | None:
        return self.default

    async def get_item_features(self, item_ids: Sequence[int]):  # type: ignore[no-untyped-def]
        return batch_from([None] * len(item_ids))


@dataclass
class Metadata:
    items: dict[int, ItemMetadata] = field(default_factory=dict)
    profile: UserProfile | None = None
    consumed: set[int] = field(default_factory=set)
    popular: list[int] = field(default_factory=list)
    failure: Failing | None = None
    history_failure: Failing | None = None
    # Which item metadata reads fail (1 is the first).
    failing_item_reads: tuple[int, ...] = ()
    reads: list[str] = field(default_factory=list)

    async def get_user(self, user_id: str) -> UserProfile | None:
        self.reads.append("profile")
        if self.failure is not None:
            await self.failure()
        return self.profile

    async def consumed_item_ids(self, user_id: str, *, limit: int = 10_000) -> set[int]:
        if self.history_failure is not None:
            await self.history_failure()
        return set(self.consumed)

    async def get_items(self, item_ids: Sequence[int]) -> dict[int, ItemMetadata]:
        self.reads.append(f"items:{len(item_ids)}")
        if self.failure is not None:
            await self.failure()
        reads = sum(read.startswith("items:") for read in self.reads)
        if reads in self.failing_item_reads:
            raise Unavailable("connection terminated")
        return {item: self.items[item] for item in item_ids if item in self.items}

    async def popular_items(self, *, category: str | None, limit: int) -> list[int]:
        if self.failure is not None:
            await self.failure()
        chosen = [i for i in self.popular if category is None or self.items[i].category == category]
        return chosen[:limit]


@dataclass
class Cache:
    entries: dict[tuple[str, str], CachedRecommendations] = field(default_factory=dict)
    failure: Failing | None = None
    stored: list[CachedRecommendations] = field(default_factory=list)

    async def get(self, kind: str, user_id: str, surface: str) -> CachedRecommendations | None:
        if self.failure is not None:
            await self.failure()
        return self.entries.get((kind, user_id))

    async def put(self, kind, user_id, surface, value, ttl_seconds) -> None:  # type: ignore[no-untyped-def]
        if self.failure is not None:
            await self.failure()
        self.stored.append(value)


@dataclass
class Limiter:
    allowed: bool = True
    failure: Failing | None = None
    limit: int = 100
    window_seconds: int = 60

    async def hit(self, key: str) -> RateDecision:
        if self.failure is not None:
            await self.failure()
        return RateDecision(self.allowed, 0, 0.0 if self.allowed else 12.0)


@dataclass
class Source:
    name: str
    pool: CandidatePool = field(default_factory=CandidatePool)
    failure: Failing | None = None
    requests: list[CandidateRequest] = field(default_factory=list)

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        self.requests.append(request)
        if self.failure is not None:
            await self.failure()
        return self.pool


@dataclass
class Scorer:
    """Scores by item id (higher id first) unless told the backend fell back."""

    backend: Backend = Backend.MODEL
    default_features: bool = False
    calls: int = 0

    async def score(  # type: ignore[no-untyped-def]
        self, user_id, item_ids, candidate_scores, context, *, sources=None, history_size=None
    ) -> ScoredCandidates:
        self.calls += 1
        order = np.argsort(-item_ids)
        return ScoredCandidates(
            item_ids[order],
            item_ids[order].astype(np.float32),
            self.backend,
            "m1" if self.backend is Backend.MODEL else "",
            default_features=self.default_features,
        )


@dataclass
class Observer:
    failures: list[tuple[str, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def stage_finished(self, stage: str, seconds: float) -> None:
        return None

    def stage_failed(self, stage: str, kind: str) -> None:
        self.failures.append((stage, kind))

    def cache_hit(self, source: str) -> None:
        self.events.append(f"hit:{source}")

    def rate_limited(self) -> None:
        self.events.append("rate_limited")

    def rate_limit_bypassed(self) -> None:
        self.events.append("bypassed")

    def answered(self, seconds, *, cold_start, empty, degradations) -> None:  # type: ignore[no-untyped-def]
        self.events.append("answered")

    def failed(self, seconds: float) -> None:
        self.events.append("failed")


CATEGORIES = ("drama", "comedy", "news")


@dataclass
class World:
    features: Features = field(default_factory=lambda: Features(UserFeatures(embedding(), {}, ())))
    metadata: Metadata = field(
        default_factory=lambda: Metadata(
            items={i: ItemMetadata(i, CATEGORIES[i % 3], popularity=i / 100) for i in range(1, 41)},
            popular=list(range(40, 0, -1)),
        )
    )
    cache: Cache = field(default_factory=Cache)
    limiter: Limiter = field(default_factory=Limiter)
    personalized: Source = field(
        default_factory=lambda: Source(
            "retrieval",
            CandidatePool.ranked(range(1, 31), Reason.PERSONALIZED, index_version="idx1"),
        )
    )
    fallback: Source = field(
        default_factory=lambda: Source(
            "popularity", CandidatePool.ranked([40, 39], Reason.TRENDING)
        )
    )
    cold_start: list[Source] = field(default_factory=list)
    scorer: Scorer = field(default_factory=Scorer)
    observer: Observer = field(default_factory=Observer)
    config: RecommendConfig = field(
        default_factory=lambda: RecommendConfig(
            feature_timeout_seconds=0.05, diversity_enabled=False
        )
    )

    def pipeline(self) -> RecommendPipeline:
        return RecommendPipeline(
            self.config,
            features=self.features,  # type: ignore[arg-type]
            metadata=self.metadata,  # type: ignore[arg-type]
            cache=self.cache,  # type: ignore[arg-type]
            sources=CandidateSources(self.personalized, self.fallback, self.cold_start),
            scorer=self.scorer,
            limiter=self.limiter,  # type: ignore[arg-type]
            observer=self.observer,
        )


def query(limit: int = 5, **context: object) -> RecommendQuery:
    return RecommendQuery("u1", "homepage", limit, RequestContext(**context))  # type: ignore[arg-type]


async def test_personalised_answer_is_ranked_filtered_and_cached() -> None:
    world = World()
    world.metadata.consumed = {30}
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [29, 28, 27, 26, 25]
    assert {item.reason for item in answer.items} == {Reason.PERSONALIZED}
    assert answer.items[0].reason_text == "Matches your taste"
    assert answer.ranking_backend is Backend.MODEL
    assert answer.model_version == "m1"
    assert answer.index_version == "idx1"
    assert answer.degradation.flags() == []
    assert len(world.cache.stored) == 1
    assert world.cache.stored[0].items[0].reason == "personalized"


async def test_response_cache_hit_skips_the_pipeline() -> None:
    world = World()
    world.cache.entries[("recommendations", "u1")] = CachedRecommendations(
        (CachedItem(7, 0.5, "comedy", "trending", "Trending now"),), ranking_backend="model"
    )
    answer = await world.pipeline().recommend(query())
    assert answer.degradation.served_from_cache
    assert [(item.item_id, item.reason) for item in answer.items] == [(7, Reason.TRENDING)]
    assert answer.ranking_backend is Backend.MODEL
    assert world.personalized.requests == []
    assert world.scorer.calls == 0
    assert "hit:response_cache" in world.observer.events


async def test_cache_outage_is_counted_and_the_answer_computed() -> None:
    world = World()
    world.cache.failure = Failing(Unavailable("redis down"))
    answer = await world.pipeline().recommend(query())
    assert len(answer.items) == 5
    assert answer.degradation.kinds() == []
    assert ("cache_recommendations", "unavailable") in world.observer.failures
    assert ("cache_store", "unavailable") in world.observer.failures


def precomputed(*item_ids: int, **fields: object) -> CachedRecommendations:
    """A stored answer in the given order, scores descending, as `recsys precompute` writes."""
    items = tuple(
        CachedItem(item, 1.0 - rank / 100, "stale-category", "similar_to_liked")
        for rank, item in enumerate(item_ids)
    )
    values: dict[str, object] = {
        "model_version": "m0",
        "index_version": "idx0",
        "explanation": "Picked for you",
        "ranking_backend": "model",
        **fields,
    }
    return CachedRecommendations(items, **values)  # type: ignore[arg-type]


async def test_precomputed_hit_keeps_its_order_and_excludes_what_was_consumed_since() -> None:
    world = World()
    world.features = Features(UserFeatures(embedding(), {}, (9,)))  # recent, not yet in SQL
    world.metadata.consumed = {3}
    world.cache.entries[("precomputed", "u1")] = precomputed(5, 3, 9, 1, 7, 2, 8, 4, 6, 10)
    request = RecommendQuery("u1", "homepage", 5, RequestContext(), excluded_item_ids=(7,))
    answer = await world.pipeline().recommend(request)
    assert [item.item_id for item in answer.items] == [5, 1, 2, 8, 4]
    # Stored scores and reasons; categories from today's metadata.
    assert [item.score for item in answer.items] == pytest.approx([1.0, 0.97, 0.95, 0.94, 0.93])
    assert {item.reason for item in answer.items} == {Reason.SIMILAR_TO_LIKED}
    assert answer.items[0].category == "news"
    assert (answer.model_version, answer.index_version) == ("m0", "idx0")
    assert answer.ranking_backend is Backend.MODEL
    assert answer.degradation.flags() == [Flag.SERVED_FROM_PRECOMPUTED]
    # Not re-ranked, no retrieval, nothing cached.
    assert world.scorer.calls == 0
    assert world.personalized.requests == []
    assert world.cache.stored == []
    assert "hit:precomputed" in world.observer.events


async def test_precomputed_hit_is_refiltered_for_the_current_profile_and_country() -> None:
    world = World()
    items = world.metadata.items
    items[1] = ItemMetadata(1, "comedy", adult=True)
    items[2] = ItemMetadata(2, "news", available_regions=("DE",))
    world.metadata.profile = UserProfile("u1", age=15, country="DE", blocked_categories=("drama",))
    world.cache.entries[("precomputed", "u1")] = precomputed(*range(1, 15))
    answer = await world.pipeline().recommend(query(limit=4, country="FR"))
    assert answer.degradation.served_from_precomputed
    # 1: adult, for a minor; 2: not available in FR; 3, 6, 9, 12: a blocked category.
    assert [item.item_id for item in answer.items] == [4, 5, 7, 8]
    at_home = await world.pipeline().recommend(query(limit=4, country="DE"))
    assert [item.item_id for item in at_home.items] == [2, 4, 5, 7]


async def test_precomputed_hit_is_diversified_as_the_live_path() -> None:
    world = World()
    world.config = RecommendConfig(diversity_max_per_category=1, diversity_window=3)
    # 3, 6 and 9 are drama: one of them in the first three.
    world.cache.entries[("precomputed", "u1")] = precomputed(3, 6, 9, 1, 2)
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [3, 1, 2, 6, 9]
    assert answer.degradation.served_from_precomputed


async def test_precomputed_metadata_is_read_for_a_prefix_then_the_rest_if_needed() -> None:
    world = World()
    world.metadata.items.update({i: ItemMetadata(i, CATEGORIES[i % 3]) for i in range(41, 81)})
    world.cache.entries[("precomputed", "u1")] = precomputed(*range(1, 81))
    # Twice the diversity window (20) for a request of 5: 40 items.
    first = await world.pipeline().recommend(query())
    assert [item.item_id for item in first.items] == [1, 2, 3, 4, 5]
    assert [read for read in world.metadata.reads if read.startswith("items")] == ["items:40"]
    # 38 of those consumed since: two survive, and the other 40 are read.
    world.metadata.reads.clear()
    world.metadata.consumed = set(range(1, 39))
    second = await world.pipeline().recommend(query())
    assert second.degradation.served_from_precomputed
    assert [item.item_id for item in second.items] == [39, 40, 41, 42, 43]
    assert [read for read in world.metadata.reads if read.startswith("items")] == [
        "items:40",
        "items:40",
    ]


async def test_the_live_path_answers_when_a_precomputed_entry_cannot_serve() -> None:
    world = World()
    world.metadata.consumed = {3}
    world.cache.entries[("precomputed", "u1")] = precomputed(1, 2, 3)
    # Two items left of three: fewer than the five asked for.
    short = await world.pipeline().recommend(query())
    assert not short.degradation.served_from_precomputed
    assert [item.item_id for item in short.items] == [30, 29, 28, 27, 26]
    assert short.model_version == "m1"
    assert world.scorer.calls == 1
    # A category request needs a list of its own.
    by_category = await world.pipeline().recommend(query(limit=2, category="news"))
    assert not by_category.degradation.served_from_precomputed
    # An erased user has no pre-computed answer whatever is still stored.
    world.metadata.profile = UserProfile("u1", deleted=True)
    erased = await world.pipeline().recommend(query(limit=2))
    assert not erased.degradation.served_from_precomputed


async def test_precomputed_items_without_metadata_are_never_served_unchecked() -> None:
    world = World()
    world.metadata.failing_item_reads = (1,)
    world.cache.entries[("precomputed", "u1")] = precomputed(*range(1, 11))
    answer = await world.pipeline().recommend(query())
    # The live path answered (its own metadata read succeeded), unflagged by the failed check.
    assert not answer.degradation.served_from_precomputed
    assert answer.degradation.kinds() == []
    assert ("item_metadata", "unavailable") in world.observer.failures


async def test_compute_skips_the_rate_limit_and_both_caches() -> None:
    world = World()
    world.limiter.allowed = False
    world.cache.entries[("recommendations", "u1")] = precomputed(1)
    world.cache.entries[("precomputed", "u1")] = precomputed(*range(1, 11))
    answer = await world.pipeline().compute(query(limit=1))
    # Every item that survives selection (up to MAX_LIMIT), not the request's limit.
    assert [item.item_id for item in answer.items] == list(range(30, 0, -1))
    assert answer.degradation.flags() == []
    assert world.cache.stored == []
    with pytest.raises(ResourceExhausted):
        await world.pipeline().recommend(query())


async def test_slow_features_use_the_default_embedding_flagged_and_uncached() -> None:
    world = World()
    world.features = Features(default=embedding(), failure=Failing(sleep=1.0))
    pipeline = world.pipeline()
    await pipeline.refresh_default_embedding()
    answer = await pipeline.recommend(query())
    assert answer.degradation.default_features
    used = world.personalized.requests[0].embedding
    assert used is not None
    assert used.embedding_version == "e1"
    assert ("features", "timeout") in world.observer.failures
    assert world.cache.stored == []


async def test_a_slow_read_is_cut_at_the_callers_deadline() -> None:
    world = World()
    world.metadata.failure = Failing(sleep=5.0)
    started = asyncio.get_running_loop().time()
    with request_deadline(0.2):
        answer = await world.pipeline().recommend(query())
    # Profile and item metadata cannot be read in time: no history, nothing passes the
    # privacy filters (fail closed), then trending, whose metadata is missing too.
    assert asyncio.get_running_loop().time() - started < 1.0
    assert answer.items == ()
    assert ("profile", "timeout") in world.observer.failures


async def test_cold_start_merges_sources_in_order_and_scores_by_the_rule() -> None:
    world = World()
    world.features = Features(UserFeatures(None, {}, ()))
    world.metadata.profile = UserProfile("u1", onboarding_categories=("news",))
    world.cold_start = [
        Source("popular_in_category", CandidatePool.ranked([2, 5], Reason.POPULAR_IN_CATEGORY)),
        Source("popularity", CandidatePool.ranked([40, 2, 1], Reason.TRENDING)),
        Source("similar_to_liked", CandidatePool.ranked([3, 40], Reason.SIMILAR_TO_LIKED)),
    ]
    answer = await world.pipeline().recommend(query(limit=10))
    # News items (2, 5) get +1, item 3 is similar (+0.5), popularity is id / 100; an item
    # found twice keeps the reason of the first source.
    assert [(item.item_id, item.reason) for item in answer.items] == [
        (5, Reason.POPULAR_IN_CATEGORY),
        (2, Reason.POPULAR_IN_CATEGORY),
        (3, Reason.SIMILAR_TO_LIKED),
        (40, Reason.TRENDING),
        (1, Reason.TRENDING),
    ]
    assert answer.cold_start
    assert answer.ranking_backend is Backend.RULE_FALLBACK
    assert answer.items[0].reason_text == "Popular in news"
    assert world.scorer.calls == 0


async def test_a_failing_cold_start_source_costs_only_its_candidates() -> None:
    world = World()
    world.features = Features(UserFeatures(None, {}, ()))
    world.cold_start = [
        Source("popular_in_category", failure=Failing(Unavailable("down"))),
        Source("popularity", CandidatePool.ranked([40], Reason.TRENDING)),
    ]
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [40]
    assert ("popular_in_category", "unavailable") in world.observer.failures


@pytest.mark.parametrize(
    "error",
    [
        FailedPrecondition("stale", reason="EMBEDDING_VERSION_MISMATCH"),
        Unavailable("no shard"),
        DeadlineExceeded("slow"),
    ],
)
async def test_retrieval_failure_falls_back_to_popularity_flagged(error: Exception) -> None:
    world = World()
    world.personalized.failure = Failing(error)
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [40, 39]
    assert answer.degradation.popularity_candidates
    assert {item.reason for item in answer.items} == {Reason.TRENDING}
    assert answer.explanation == "Popular right now"
    assert world.cache.stored == []


@pytest.mark.parametrize(
    "error",
    [
        InvalidArgument([FieldViolation("k", "too big")]),
        FailedPrecondition("wrong dimension", reason="DIMENSION_MISMATCH"),
    ],
)
async def test_a_request_bug_in_retrieval_is_an_error_not_a_degradation(error: Exception) -> None:
    world = World()
    world.personalized.failure = Failing(error)
    with pytest.raises(type(error)):
        await world.pipeline().recommend(query())
    assert world.observer.events[-1] == "failed"


async def test_partial_retrieval_and_fallback_ranking_are_flagged() -> None:
    world = World()
    world.personalized.pool = CandidatePool.ranked(
        range(1, 11), Reason.PERSONALIZED, failed_shard_ids=(3, 1)
    )
    world.scorer.backend = Backend.RULE_FALLBACK
    world.scorer.default_features = True
    answer = await world.pipeline().recommend(query())
    flags = answer.degradation
    assert flags.partial_retrieval
    assert flags.failed_shard_ids == (1, 3)
    assert flags.fallback_ranking
    assert flags.default_features
    assert answer.ranking_backend is Backend.RULE_FALLBACK
    assert world.cache.stored == []


async def test_everything_filtered_out_serves_trending_instead() -> None:
    world = World()
    world.metadata.profile = UserProfile("u1", blocked_categories=CATEGORIES[:2])
    world.personalized.pool = CandidatePool.ranked([1, 3, 4, 6], Reason.PERSONALIZED)
    world.fallback.pool = CandidatePool.ranked([40, 39, 38], Reason.TRENDING)
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [38]  # the only news item
    assert answer.degradation.popularity_candidates
    assert answer.ranking_backend is Backend.RULE_FALLBACK


async def test_an_erased_profile_is_served_as_anyone() -> None:
    world = World()
    world.metadata.profile = UserProfile("u1", blocked_categories=("drama",), deleted=True)
    answer = await world.pipeline().recommend(query(limit=30))
    assert any(item.category == "drama" for item in answer.items)


async def test_rate_limit_refusal_carries_retry_after() -> None:
    world = World()
    world.limiter.allowed = False
    with pytest.raises(ResourceExhausted) as caught:
        await world.pipeline().recommend(query())
    assert caught.value.reason == "RATE_LIMITED"
    assert "rate_limited" in world.observer.events


async def test_limiter_down_fails_open_by_default() -> None:
    world = World()
    world.limiter.failure = Failing(Unavailable("redis down"))
    answer = await world.pipeline().recommend(query())
    assert len(answer.items) == 5
    assert "bypassed" in world.observer.events


async def test_limiter_down_fails_closed_when_configured() -> None:
    world = World()
    world.limiter.failure = Failing(sleep=1.0)
    world.config = RecommendConfig(rate_limit_fail_open=False, rate_limit_timeout_seconds=0.02)
    with pytest.raises(Unavailable) as caught:
        await world.pipeline().recommend(query())
    assert caught.value.reason == "RATE_LIMITER_DOWN"
    assert ("rate_limit", "timeout") in world.observer.failures
    assert world.personalized.requests == []


async def test_a_category_request_is_filtered_and_not_cached() -> None:
    world = World()
    answer = await world.pipeline().recommend(query(category="news"))
    assert {item.category for item in answer.items} == {"news"}
    assert world.cache.stored == []


class Search:
    """VectorSearch scripted per query vector: the first coordinate picks the answer."""

    def __init__(self, answers: dict[float, object]) -> None:
        self.answers = answers

    async def retrieve(self, query: RetrievalQuery) -> RetrievalResult:
        answer = self.answers[float(query.vector[0])]
        if isinstance(answer, Exception):
            raise answer
        ids = np.array(answer, np.int64)
        return RetrievalResult(
            ids, np.ones(len(ids), np.float32), (ids % 2).astype(np.int32), "i", "e1", ()
        )


class LikedFeatures(Features):
    async def get_item_features(self, item_ids: Sequence[int]):  # type: ignore[no-untyped-def]
        from recsys.ports.features import ItemFeatures

        return batch_from(
            [
                ItemFeatures("drama", 0.0, 0.0, np.full(4, float(item), np.float32))
                for item in item_ids
            ]
        )


async def test_similar_to_liked_searches_concurrently_and_survives_one_failure() -> None:
    source = SimilarToLikedCandidates(
        LikedFeatures(),  # type: ignore[arg-type]
        Search({1.0: [5, 6], 2.0: Unavailable("shard down"), 3.0: [6, 7]}),
        per_item=2,
    )
    request = CandidateRequest(query(), None, UserProfile("u1", liked_item_ids=(1, 2, 3)), "e1")
    pool = await source.candidates(request)
    assert pool.item_ids == (5, 6, 7)
    assert set(pool.reasons) == {Reason.SIMILAR_TO_LIKED}
    failing = SimilarToLikedCandidates(
        LikedFeatures(),  # type: ignore[arg-type]
        Search({1.0: Unavailable("down")}),
        per_item=2,
    )
    with pytest.raises(Unavailable):
        await failing.candidates(
            CandidateRequest(query(), None, UserProfile("u1", liked_item_ids=(1,)), "e1")
        )


def test_flags_list_what_shaped_the_answer() -> None:
    from recsys.domain.recommend.values import Degradation

    flags = Degradation.of([Flag.SERVED_FROM_PRECOMPUTED, Flag.PARTIAL_RETRIEVAL], [2])
    assert flags.kinds() == ["partial_retrieval"]
    assert flags.flags() == [Flag.SERVED_FROM_PRECOMPUTED, Flag.PARTIAL_RETRIEVAL]


async def test_a_failed_history_read_is_flagged_excludes_recent_items_and_is_not_cached() -> None:
    world = World()
    world.metadata.consumed = {30, 29}
    world.metadata.history_failure = Failing(Unavailable("connection terminated"))
    world.features.user = UserFeatures(embedding(), {}, (30,))
    answer = await world.pipeline().recommend(query())
    assert answer.degradation.metadata_unavailable
    # The feature store's recent interactions still apply; the SQL history could not.
    assert [item.item_id for item in answer.items] == [29, 28, 27, 26, 25]
    assert ("history", "unavailable") in world.observer.failures
    assert world.cache.stored == []


async def test_a_locked_profile_table_costs_its_budget_only() -> None:
    world = World()
    world.metadata.failure = Failing(sleep=5.0)  # profile and item reads block
    world.config = RecommendConfig(metadata_timeout_seconds=0.05, diversity_enabled=False)
    started = asyncio.get_running_loop().time()
    answer = await world.pipeline().recommend(query())
    assert asyncio.get_running_loop().time() - started < 1.0
    assert answer.degradation.metadata_unavailable
    # No item metadata: nothing can pass the filters, and nothing unchecked is served.
    assert answer.items == ()
    assert ("profile", "timeout") in world.observer.failures
    assert world.cache.stored == []


async def test_a_failed_metadata_chunk_never_lets_lower_ranks_stand_in() -> None:
    world = World()
    # Only news items pass (blocked: drama, comedy), and the first chunk of 6 holds 2 of them.
    world.metadata.profile = UserProfile("u1", blocked_categories=CATEGORIES[:2])
    world.metadata.failing_item_reads = (2,)  # the next chunk would read fine again
    world.config = RecommendConfig(selection_prefix=6, diversity_enabled=False)
    answer = await world.pipeline().recommend(query(limit=10))
    # Ranked by id descending: 30..25 is the first chunk; its news items are 29 and 26.
    assert [item.item_id for item in answer.items] == [29, 26]
    assert answer.degradation.metadata_unavailable
    assert world.cache.stored == []


async def test_identical_concurrent_misses_share_one_run_and_each_is_rate_limited() -> None:
    world = World()
    hits = 0
    hit = world.limiter.hit

    async def counting_hit(key: str) -> RateDecision:
        nonlocal hits
        hits += 1
        return await hit(key)

    world.limiter.hit = counting_hit  # type: ignore[method-assign]
    slow = world.personalized.failure = Failing(sleep=0.05)
    assert slow.error is None
    pipeline = world.pipeline()
    answers = await asyncio.gather(
        *(pipeline.recommend(query(limit=1 + index % 5)) for index in range(150))
    )
    assert len(world.personalized.requests) == 1
    assert world.scorer.calls == 1
    assert hits == 150
    assert [len(answer.items) for answer in answers[:5]] == [1, 2, 3, 4, 5]
    assert world.observer.events.count("hit:single_flight") == 149
    # Another surface, category or exclusion is another question: not shared.
    await asyncio.gather(
        pipeline.recommend(RecommendQuery("u1", "search", 5, RequestContext())),
        pipeline.recommend(query(category="news")),
    )
    assert len(world.personalized.requests) == 3


async def test_a_cached_answer_serves_only_the_country_it_was_filtered_for() -> None:
    world = World()
    world.cache.entries[("recommendations", "u1")] = CachedRecommendations(
        (CachedItem(7, 0.5, "comedy", "trending", "Trending now"),), extra={"country": "US"}
    )
    same = await world.pipeline().recommend(query(country="US"))
    assert same.degradation.served_from_cache
    other = await world.pipeline().recommend(query(country="DE"))
    assert not other.degradation.served_from_cache  # filtered for the US, not for here
    assert world.cache.stored[-1].extra == {"country": "DE"}


async def test_the_deployment_country_applies_when_request_and_profile_name_none() -> None:
    world = World()
    world.metadata.items[2] = ItemMetadata(2, "news", available_regions=("DE",))
    world.metadata.profile = UserProfile("u1", age=30)
    world.cache.entries[("precomputed", "u1")] = precomputed(*range(1, 15))
    nowhere = await world.pipeline().recommend(query(limit=3))
    assert [item.item_id for item in nowhere.items] == [1, 3, 4]
    world.config = RecommendConfig(default_country="DE")
    in_germany = await world.pipeline().recommend(query(limit=3))
    assert [item.item_id for item in in_germany.items] == [1, 2, 3]
    # The request's own country still wins.
    abroad = await world.pipeline().recommend(query(limit=3, country="FR"))
    assert [item.item_id for item in abroad.items] == [1, 3, 4]


@dataclass
class ProfileAfterRetrieval(Metadata):
    """Answers the profile and history only once retrieval has been asked for candidates."""

    retrieval_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def get_user(self, user_id: str) -> UserProfile | None:
        await self.retrieval_started.wait()
        return await super().get_user(user_id)

    async def consumed_item_ids(self, user_id: str, *, limit: int = 10_000) -> set[int]:
        await self.retrieval_started.wait()
        return await super().consumed_item_ids(user_id, limit=limit)


@dataclass
class SignallingSource(Source):
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        self.started.set()
        return await super().candidates(request)


async def test_retrieval_runs_beside_the_profile_and_history_reads() -> None:
    world = World()
    source = SignallingSource("retrieval", world.personalized.pool)
    world.personalized = source
    world.metadata = ProfileAfterRetrieval(
        items=world.metadata.items,
        consumed={30},
        profile=UserProfile("u1", age=30),
        retrieval_started=source.started,
    )
    # Had retrieval waited for the profile and history, both reads would run out of budget.
    world.config = RecommendConfig(
        feature_timeout_seconds=5, metadata_timeout_seconds=5, diversity_enabled=False
    )
    answer = await world.pipeline().recommend(query())
    assert answer.degradation.flags() == []
    assert [item.item_id for item in answer.items] == [29, 28, 27, 26, 25]
    assert len(source.requests) == 1
    assert source.requests[0].profile is None  # it ran before the profile was read


async def test_no_retrieval_runs_when_a_precomputed_entry_may_answer() -> None:
    world = World()
    world.cache.entries[("precomputed", "u1")] = precomputed(5, 3, 9, 1, 7, 2, 8, 4, 6, 10)
    answer = await world.pipeline().recommend(query())
    assert answer.degradation.served_from_precomputed
    assert world.personalized.requests == []
    # One too short to answer: retrieval runs beside the profile and history, and answers.
    world = World()
    world.cache.entries[("precomputed", "u1")] = precomputed(1, 2)
    answer = await world.pipeline().recommend(query())
    assert not answer.degradation.served_from_precomputed
    assert len(world.personalized.requests) == 1
    assert [item.item_id for item in answer.items] == [30, 29, 28, 27, 26]


async def test_the_default_embedding_retrieves_once_every_read_is_in() -> None:
    world = World()
    world.features = Features(failure=Failing(Unavailable("redis down")), default=embedding())
    pipeline = world.pipeline()
    await pipeline.refresh_default_embedding()
    answer = await pipeline.recommend(query())
    assert Flag.DEFAULT_FEATURES in answer.degradation.flags()
    assert len(world.personalized.requests) == 1
    used = world.personalized.requests[0].embedding
    assert used is not None
    assert used.embedding_version == "e1"
