"""The precompute job: tiers, bounded concurrency, the time budget and what is (not) written,
with scripted fakes; then on a real embedded world, Recommend over gRPC serving what the job
wrote, re-checked at serve time."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from recsys.domain.interactions import Interaction, InteractionKind
from recsys.domain.recommend.tiers import ActivityTier
from recsys.domain.recommend.values import (
    Degradation,
    Reason,
    Recommendation,
    RecommendedItem,
)
from recsys.domain.requests import RecommendQuery, RequestContext
from recsys.errors import ConfigurationError, Unavailable
from recsys.grpc_server.app import GrpcApplication
from recsys.ports.cache import CachedRecommendations
from recsys.ports.metadata import UserProfile
from recsys.precompute import PrecomputeJob, activity_tiers, job_settings
from recsys.settings import load_settings
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.world import build_world, catalogue

SEED = (
    ActivityTier("hourly", 0.10, 3_600),
    ActivityTier("daily", 0.30, 86_400),
    ActivityTier("weekly", 0.60, 604_800),
)
SINCE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def answer(*item_ids: int, degradation: Degradation | None = None) -> Recommendation:
    return Recommendation(
        tuple(RecommendedItem(item, 1.0, "drama", Reason.PERSONALIZED) for item in item_ids),
        model_version="m1",
        degradation=degradation or Degradation(),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Pipeline:
    """Answers per user (default: items 1 and 2); counts how many run at once."""

    answers: dict[str, Recommendation | Exception] = dataclasses.field(default_factory=dict)
    clock: Clock | None = None
    running: int = 0
    most_at_once: int = 0
    queries: list[RecommendQuery] = dataclasses.field(default_factory=list)

    async def compute(self, query: RecommendQuery) -> Recommendation:
        self.queries.append(query)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0.001)
        self.running -= 1
        if self.clock is not None:
            self.clock.now += 1.0
        found = self.answers.get(query.user_id, answer(1, 2))
        if isinstance(found, Exception):
            raise found
        return found


@dataclasses.dataclass
class Cache:
    puts: list[tuple[str, str, str, CachedRecommendations, int]] = dataclasses.field(
        default_factory=list
    )

    async def put(
        self, kind: str, user_id: str, surface: str, value: CachedRecommendations, ttl: int
    ) -> None:
        self.puts.append((kind, user_id, surface, value, ttl))


@dataclasses.dataclass
class Metadata:
    activity: list[tuple[str, int]]
    erased: set[str] = dataclasses.field(default_factory=set)
    since: list[dt.datetime] = dataclasses.field(default_factory=list)

    async def user_activity(self, since: dt.datetime) -> list[tuple[str, int]]:
        self.since.append(since)
        return list(self.activity)

    async def erased_user_ids(self, user_ids: Iterable[str]) -> set[str]:
        return self.erased & set(user_ids)


def users(count: int) -> list[tuple[str, int]]:
    """user00 the most active."""
    return [(f"user{index:02d}", 100 - index) for index in range(count)]


def job(pipeline: Pipeline, cache: Cache, metadata: Metadata, clock: Clock) -> PrecomputeJob:
    return PrecomputeJob(pipeline, cache, metadata, clock=clock)  # type: ignore[arg-type]


async def test_each_tier_is_written_with_its_ttl_in_bounded_concurrency() -> None:
    pipeline, cache, metadata = Pipeline(), Cache(), Metadata(users(20))
    report = await job(pipeline, cache, metadata, Clock()).run(
        SEED, since=SINCE, surfaces=("homepage", "email"), concurrency=3, budget_seconds=60
    )
    assert metadata.since == [SINCE]
    assert [(tier.name, tier.users, tier.written) for tier in report.tiers] == [
        ("hourly", 2, 4),
        ("daily", 4, 8),
        ("weekly", 6, 12),
    ]
    assert report.on_demand == 8
    assert pipeline.most_at_once == 3
    ttl_of = {(user, surface): ttl for _, user, surface, _, ttl in cache.puts}
    assert ttl_of[("user00", "email")] == 3_600
    assert ttl_of[("user05", "homepage")] == 86_400
    assert ttl_of[("user11", "homepage")] == 604_800
    assert ("user12", "homepage") not in ttl_of  # on demand
    kind, _, _, value, _ = cache.puts[0]
    assert kind == "precomputed"
    assert [item.item_id for item in value.items] == [1, 2]
    assert (value.model_version, value.items[0].reason) == ("m1", "personalized")
    assert value.extra["tier"] == "hourly"
    # The whole list a request may ask for, without a country of its own.
    assert {(query.limit, query.context.country) for query in pipeline.queries} == {(100, "")}
    assert not report.all_failed
    assert report.as_dict()["tiers"][0]["written"] == 4


async def test_degraded_empty_erased_and_failed_answers_are_not_written() -> None:
    pipeline = Pipeline(
        {
            "user00": answer(1, degradation=Degradation(default_features=True)),
            "user01": answer(),
            "user02": Unavailable("retrieval down"),
            "user03": RuntimeError("a bug"),
        }
    )
    cache, metadata = Cache(), Metadata(users(5), erased={"user04"})
    report = await job(pipeline, cache, metadata, Clock()).run(
        (ActivityTier("all", 1.0, 60),),
        since=SINCE,
        surfaces=("homepage",),
        concurrency=2,
        budget_seconds=60,
    )
    (tier,) = report.tiers
    assert tier.written == 0
    assert cache.puts == []
    assert dict(tier.skipped) == {"degraded:default_features": 1, "empty": 1, "erased": 1}
    assert dict(tier.failed) == {"unavailable": 1, "RuntimeError": 1}
    assert not report.all_failed
    text = report.table()
    assert "degraded:default_features 1" in text
    assert "unavailable 1" in text


async def test_every_answer_failing_is_reported_as_such() -> None:
    pipeline = Pipeline({user: Unavailable("down") for user, _ in users(3)})
    report = await job(pipeline, Cache(), Metadata(users(3)), Clock()).run(
        (ActivityTier("all", 1.0, 60),),
        since=SINCE,
        surfaces=("homepage",),
        concurrency=2,
        budget_seconds=60,
    )
    assert report.all_failed
    nobody = await job(Pipeline(), Cache(), Metadata([]), Clock()).run(
        SEED, since=SINCE, surfaces=("homepage",), concurrency=2, budget_seconds=60
    )
    assert not nobody.all_failed


async def test_past_the_budget_no_user_is_started_and_the_rest_is_reported() -> None:
    clock = Clock()
    pipeline, cache = Pipeline(clock=clock), Cache()
    planned: list[int] = []
    done: list[int] = []
    report = await job(pipeline, cache, Metadata(users(10)), clock).run(
        SEED,
        chosen=["daily", "hourly"],
        since=SINCE,
        surfaces=("homepage",),
        concurrency=1,
        budget_seconds=2.5,
        on_plan=planned.append,
        on_user=lambda: done.append(1),
    )
    # Each answer takes 1 s of the clock: users started at 0, 1 and 2 s; none at 3 s.
    hourly, daily = report.tiers
    assert (hourly.users, hourly.reached, hourly.written) == (1, 1, 1)
    assert (daily.users, daily.reached, daily.not_reached) == (2, 2, 0)
    assert planned == [3]
    assert len(done) == 3
    assert report.seconds == 3.0
    assert report.users_per_second == 1.0
    assert "1.0 users/s" in report.table()

    clock.now = 0.0
    late = await job(pipeline, Cache(), Metadata(users(10)), clock).run(
        SEED, since=SINCE, surfaces=("homepage",), concurrency=1, budget_seconds=1.5
    )
    assert [(tier.reached, tier.not_reached) for tier in late.tiers] == [(1, 0), (1, 1), (0, 3)]


async def test_an_unknown_tier_is_refused_before_anything_runs() -> None:
    pipeline = Pipeline()
    with pytest.raises(ConfigurationError, match="unknown tier monthly"):
        await job(pipeline, Cache(), Metadata(users(3)), Clock()).run(
            SEED,
            chosen=["monthly"],
            since=SINCE,
            surfaces=("homepage",),
            concurrency=1,
            budget_seconds=10,
        )
    assert pipeline.queries == []


def test_the_job_waits_longer_than_a_request_for_each_read() -> None:
    settings = load_settings(precompute={"read_timeout_ms": 1_500}, rank={"timeout_ms": 5_000})
    widened = job_settings(settings)
    assert widened.recommend.feature_timeout_ms == 1_500
    assert widened.recommend.metadata_timeout_ms == 1_500
    assert widened.rank.feature_timeout_ms == 1_500
    assert widened.rank.timeout_ms == 5_000  # already longer: kept
    assert widened.redis.socket_timeout_ms == 1_500
    assert widened.retrieve.shard_timeout_ms == 1_500
    assert settings.recommend.feature_timeout_ms == 10  # the serving settings untouched


# ---------------------------------------------------------------- on a real embedded world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    app = await build_world(tmp_path)
    # The kid is the most active (hourly); alice (3 interactions) weekly, of two active users.
    now = dt.datetime.now(dt.UTC)
    await app.components.metadata.record_interactions(
        [Interaction(f"k{i}", "kid", i, InteractionKind.VIEW, 0.0, now) for i in (20, 21, 22, 24)]
    )
    yield app
    await app.shutdown()


def client_for(app: GrpcApplication) -> AsyncRecsysClient:
    return AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=10, retry=None))


async def precompute(app: GrpcApplication) -> None:
    components = app.components
    assert components is not None
    assert components.recommend_pipeline is not None
    report = await PrecomputeJob(
        components.recommend_pipeline, components.recommendation_cache, components.metadata
    ).run(
        activity_tiers(components.settings),
        since=dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
        surfaces=("homepage",),
        concurrency=2,
        budget_seconds=60,
    )
    assert [(tier.name, tier.users, tier.written) for tier in report.tiers] == [
        ("hourly", 1, 1),
        ("daily", 0, 0),
        ("weekly", 1, 1),
    ]


async def test_recommend_serves_what_the_job_wrote_as_the_live_path_would(
    world: GrpcApplication,
) -> None:
    await precompute(world)
    pipeline = world.components.recommend_pipeline
    live = await pipeline.compute(RecommendQuery("alice", "homepage", 30, RequestContext()))
    async with client_for(world) as client:
        served = await client.recommend("alice", surface="homepage", limit=30)
    assert served.degradation.served_from_precomputed
    assert not served.degradation.served_from_cache
    assert [item.item_id for item in served.items] == [item.item_id for item in live.items[:30]]
    assert [item.score for item in served.items] == pytest.approx(
        [item.score for item in live.items[:30]]
    )
    assert (served.model_version, served.index_version) == ("ranker:1", "v1")
    assert all(item.reason_text for item in served.items)


async def test_an_item_consumed_after_the_job_ran_is_excluded_at_serve_time(
    world: GrpcApplication,
) -> None:
    await precompute(world)
    stored = await world.components.recommendation_cache.get("precomputed", "kid", "homepage")
    assert stored is not None
    order = [item.item_id for item in stored.items]
    await world.components.metadata.record_interactions(
        [
            Interaction(
                "k-late", "kid", order[0], InteractionKind.CLICK, 1.0, dt.datetime.now(dt.UTC)
            )
        ]
    )
    async with client_for(world) as client:
        served = await client.recommend("kid", surface="homepage", limit=10)
    assert served.degradation.served_from_precomputed
    ids = [item.item_id for item in served.items]
    # The stored order less that item (diversity, applied again, may move a few).
    assert order[0] not in ids
    assert ids[0] == order[1]
    assert len(ids) == 10
    assert set(ids) <= set(order[1:])


async def test_an_adult_item_is_filtered_for_a_profile_now_of_a_minor(
    world: GrpcApplication,
) -> None:
    _, items = catalogue()
    await precompute(world)
    stored = await world.components.recommendation_cache.get("precomputed", "alice", "homepage")
    assert stored is not None
    adult = [item.item_id for item in stored.items if items[item.item_id].adult]
    assert adult  # computed for an adult
    # The profile corrected since: alice is 12.
    await world.components.metadata.upsert_users(
        [UserProfile("alice", 12, "US", blocked_categories=("Horror",))]
    )
    async with client_for(world) as client:
        served = await client.recommend("alice", surface="homepage", limit=20)
    assert served.degradation.served_from_precomputed
    ids = [item.item_id for item in served.items]
    assert not set(adult) & set(ids)
    left = [item.item_id for item in stored.items if item.item_id not in adult]
    assert ids[0] == left[0]
    assert len(ids) == 20
    assert set(ids) <= set(left)
