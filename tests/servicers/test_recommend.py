"""RecommendService end to end in the embedded mode (retrieve, rank and recommend in one
process, SQLite metadata): the seed's journeys, caches, filters, degradations and erasure."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from recsys.domain.policies import diversity_cap
from recsys.grpc_server.app import GrpcApplication
from recsys.ports.cache import CachedItem, CachedRecommendations
from recsys.ports.counters import Counter as CounterKind
from recsys.v1 import common_pb2, recommend_service_pb2
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError
from tests.support.world import build_world, catalogue


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    app = await build_world(tmp_path)
    yield app
    await app.shutdown()


def client_for(app: GrpcApplication) -> AsyncRecsysClient:
    return AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=10, retry=None))


async def test_journey_1_personalised_filtered_diverse_then_cached(world: GrpcApplication) -> None:
    _, items = catalogue()
    async with client_for(world) as client:
        first = await client.recommend("alice", surface="homepage", limit=30)
        second = await client.recommend("alice", surface="homepage", limit=30)
    assert len(first.items) == 30
    assert not first.cold_start
    assert (first.model_version, first.index_version) == ("ranker:1", "v1")
    assert first.ranking_backend == common_pb2.RANKING_BACKEND_MODEL
    assert not first.degradation.served_from_cache
    ids = [item.item_id for item in first.items]
    assert not {10, 11, 12} & set(ids)  # consumed items are excluded
    for item in first.items:
        meta = items[item.item_id]
        assert meta.category != "Horror"  # blocked
        assert not meta.available_regions or "US" in meta.available_regions
        assert item.category == meta.category
        assert item.reason_text
    top20 = Counter(item.category for item in first.items[:20])
    # Horror is blocked: 4 categories cannot fill 20 slots 3 at a time, so the cap is 5.
    assert max(top20.values()) <= 5
    assert first.request_id
    assert second.degradation.served_from_cache
    assert [i.item_id for i in second.items] == ids


async def test_minors_never_see_adult_items(world: GrpcApplication) -> None:
    _, items = catalogue()
    async with client_for(world) as client:
        response = await client.recommend("kid", surface="homepage", limit=100)
    assert response.items
    assert not any(items[item.item_id].adult for item in response.items)


async def test_journey_cold_start(world: GrpcApplication) -> None:
    _, items = catalogue()
    async with client_for(world) as client:
        response = await client.recommend("bob", surface="homepage", limit=20)
    assert response.cold_start
    assert response.explanation == "Based on your preferences"
    assert response.ranking_backend == common_pb2.RANKING_BACKEND_COLD_START
    categories = Counter(items[item.item_id].category for item in response.items)
    assert categories["Comedy"] >= 3  # the onboarding category leads
    assert max(categories.values()) <= diversity_cap(categories.values())


async def test_cold_start_trending_follows_the_consumed_events(world: GrpcApplication) -> None:
    """Trending for a new user comes from the item counters the consumer keeps: items many
    users clicked just now, however unpopular the catalogue says they are."""
    from google.protobuf import timestamp_pb2

    from recsys.v1 import interaction_event_pb2

    _, items = catalogue()
    # Unpopular in the catalogue, not adult, available everywhere.
    rising = sorted(
        (item for item in items if not item.adult and not item.available_regions),
        key=lambda item: (item.popularity, item.item_id),
    )[:3]
    now = int(time.time())
    events = [
        interaction_event_pb2.InteractionEvent(
            event_id=f"rise-{item.item_id}-{user}", user_id=f"fan-{user}", item_id=item.item_id,
            type=interaction_event_pb2.INTERACTION_TYPE_PURCHASE,
            event_time=timestamp_pb2.Timestamp(seconds=now - 10),
        )
        for item in rising
        for user in range(5)
    ]  # fmt: skip
    async with client_for(world) as client:
        before = await client.recommend("newcomer", surface="homepage", limit=20)
        assert before.cold_start
        assert not {item.item_id for item in rising} & {item.item_id for item in before.items}
        await client.record_interactions(events)
        counters = world.components.item_counters
        deadline = time.monotonic() + 5
        while len(await counters.top(CounterKind.TRENDING, 10)) < len(rising):
            assert time.monotonic() < deadline, "the events were not consumed"
            await asyncio.sleep(0.02)
        after = await client.recommend("newcomer2", surface="homepage", limit=20)
    assert after.cold_start
    trending_reason = recommend_service_pb2.RECOMMENDATION_REASON_TRENDING
    trending = {item.item_id for item in after.items if item.reason == trending_reason}
    assert trending == {item.item_id for item in rising}


async def test_stale_embedding_version_falls_back_to_popularity(world: GrpcApplication) -> None:
    async with client_for(world) as client:
        response = await client.recommend("stale", surface="homepage", limit=10)
    assert len(response.items) == 10
    assert response.degradation.popularity_candidates
    assert not response.cold_start


async def test_precomputed_results_are_served_in_their_order_and_refiltered(
    world: GrpcApplication,
) -> None:
    cache = world.components.recommendation_cache
    # 3, 13 and 23 are Horror (blocked for alice); 10 she consumed; 7 is adult (she is 30).
    precomputed = CachedRecommendations(
        items=tuple(
            CachedItem(item, 1.0 - rank / 100, "", "trending")
            for rank, item in enumerate((3, 7, 5, 13, 23, 10))
        ),
        model_version="ranker:0",
        index_version="v0",
        explanation="Picked for you",
        ranking_backend="model",
    )
    await cache.put("precomputed", "alice", "homepage", precomputed, 3600)
    async with client_for(world) as client:
        response = await client.recommend("alice", surface="homepage", limit=2)
        # Fewer items survive than asked for: the live path answers.
        longer = await client.recommend("alice", surface="homepage", limit=3)
    assert response.degradation.served_from_precomputed
    assert [(item.item_id, item.category) for item in response.items] == [
        (7, "Drama"),
        (5, "Action"),
    ]
    assert [item.score for item in response.items] == pytest.approx([0.99, 0.98])
    assert response.items[0].reason_text == "Trending now"
    # As computed, not re-ranked: the stored versions.
    assert (response.model_version, response.index_version) == ("ranker:0", "v0")
    assert response.ranking_backend == common_pb2.RANKING_BACKEND_MODEL
    assert not longer.degradation.served_from_precomputed
    assert len(longer.items) == 3
    assert longer.model_version == "ranker:1"


async def test_rate_limit_is_resource_exhausted_with_retry_info(world: GrpcApplication) -> None:
    async with client_for(world) as client:
        for _ in range(20):
            await client.recommend("kid", surface="search", limit=5)
        with pytest.raises(RecsysClientError) as caught:
            await client.recommend("kid", surface="search", limit=5)
    assert caught.value.code.name == "RESOURCE_EXHAUSTED"
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_after_seconds is not None
    assert 0 < caught.value.retry_after_seconds <= 60


async def test_erasure_removes_everything_and_is_idempotent(world: GrpcApplication) -> None:
    async with client_for(world) as client:
        await client.recommend("alice", surface="homepage", limit=5)
        first = await client.delete_user_data("alice")
        second = await client.delete_user_data("alice")
    assert first.deleted_keys >= 2  # embedding, cached result, rate-limit counter
    assert first.deleted_interactions == 3
    assert first.profile_erased
    assert (second.deleted_keys, second.deleted_interactions, second.profile_erased) == (
        0,
        0,
        False,
    )
    assert first.deletion_event_id == second.deletion_event_id
    features = world.components.feature_store
    metadata = world.components.metadata
    cache = world.components.recommendation_cache
    assert await features.get_user_embedding("alice") is None
    assert await cache.get("recommendations", "alice", "homepage") is None
    assert await metadata.count_rows_for_user("alice") == {
        "interactions": 0,
        "profile_data": 0,
        "audit_with_plain_id": 0,
    }
    events = world.components.event_sink
    assert ("alice", first.deletion_event_id) in events.deletions


@pytest.mark.parametrize(
    ("arguments", "fields"),
    [
        ({"user_id": "", "surface": "homepage", "limit": 10}, ["user_id"]),
        ({"user_id": "u 1", "surface": "homepage", "limit": 10}, ["user_id"]),
        ({"user_id": "u1", "surface": "nowhere", "limit": 10}, ["surface"]),
        ({"user_id": "u1", "surface": "homepage", "limit": 0}, ["limit"]),
        ({"user_id": "u1", "surface": "homepage", "limit": 101}, ["limit"]),
        (
            {
                "user_id": "u1",
                "surface": "homepage",
                "limit": 5,
                "context": common_pb2.RequestContext(
                    country="usa", locale="english!", category="Western"
                ),
            },
            ["context.country", "context.locale", "context.category"],
        ),
        (
            {"user_id": "u1", "surface": "homepage", "limit": 5, "excluded_item_ids": [3, -1]},
            ["excluded_item_ids[1]"],
        ),
        ({"user_id": "", "surface": "", "limit": -3}, ["user_id", "surface", "limit"]),
    ],
)
async def test_invalid_requests_name_the_fields(
    world: GrpcApplication, arguments: dict[str, object], fields: list[str]
) -> None:
    user_id = arguments.pop("user_id")
    async with client_for(world) as client:
        with pytest.raises(RecsysClientError) as caught:
            await client.recommend(user_id, **arguments)  # type: ignore[arg-type]
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert [violation.field for violation in caught.value.field_violations] == fields


async def test_ingested_interactions_are_excluded_once_consumed(world: GrpcApplication) -> None:
    """Embedded mode: the in-process consumer applies what IngestService recorded within its
    drain interval (100 ms); the next answer excludes the clicked items."""
    from google.protobuf import timestamp_pb2

    from recsys.v1 import interaction_event_pb2

    now = int(time.time())
    async with client_for(world) as client:
        before = await client.recommend("kid", surface="item_page", limit=5)
        clicked = [item.item_id for item in before.items[:3]]
        await client.record_interactions(
            [
                interaction_event_pb2.InteractionEvent(
                    event_id=f"k{item}",
                    user_id="kid",
                    item_id=item,
                    type=interaction_event_pb2.INTERACTION_TYPE_CLICK,
                    event_time=timestamp_pb2.Timestamp(seconds=now - 60 + index),
                )
                for index, item in enumerate(clicked)
            ]
        )
        features = world.components.feature_store
        deadline = time.monotonic() + 5
        while set((await features.get_user_features("kid")).recent_item_ids) != set(clicked):
            assert time.monotonic() < deadline, "the in-process consumer did not apply the events"
            await asyncio.sleep(0.02)
        after = await client.recommend("kid", surface="cart", limit=5)
    assert not set(clicked) & {item.item_id for item in after.items}


async def test_preferences_lift_their_category_in_ranking(world: GrpcApplication) -> None:
    features = world.components.feature_store
    async with client_for(world) as client:
        candidates = [(1, 0.5), (2, 0.5)]  # Comedy and Drama, equal retrieval scores
        await features.put_user_preferences("kid", {"Comedy": 1.0})
        comedy_first = await client.rank("kid", candidates)
        await features.put_user_preferences("kid", {"Drama": 1.0})
        drama_first = await client.rank("kid", candidates)
    scores = {item.item_id: item.score for item in comedy_first.items}
    lifted = {item.item_id: item.score for item in drama_first.items}
    assert scores[1] > lifted[1]
    assert lifted[2] > scores[2]


async def test_erasure_reaches_the_interactions_ingest_buffered(world: GrpcApplication) -> None:
    # One event sink per process: Ingest publishes to the sink Recommend's erasure clears.
    from google.protobuf import timestamp_pb2

    from recsys.v1 import interaction_event_pb2

    def click(user: str, item: int) -> interaction_event_pb2.InteractionEvent:
        return interaction_event_pb2.InteractionEvent(
            event_id=f"{user}-{item}",
            user_id=user,
            item_id=item,
            type=interaction_event_pb2.INTERACTION_TYPE_CLICK,
            event_time=timestamp_pb2.Timestamp(seconds=int(time.time()) - 60 + item),
        )

    from recsys.adapters.events.in_memory import InMemoryEventSink

    components = world.components
    assert components is not None
    assert isinstance(components.event_sink, InMemoryEventSink)
    async with client_for(world) as client:
        await client.record_interactions([click("alice", 1), click("bob", 2), click("alice", 3)])
        await client.delete_user_data("alice")
    # Whether the in-process consumer applied alice's events before the erasure (which then
    # removed them) or after (the tombstone drops them), nothing of hers remains.
    deadline = time.monotonic() + 5
    while 2 not in (await components.feature_store.get_user_features("bob")).recent_item_ids:
        assert time.monotonic() < deadline, "bob's event was not applied"
        await asyncio.sleep(0.02)
    assert components.event_sink.pending() == 0
    assert (await components.metadata.count_rows_for_user("alice"))["interactions"] == 0
    assert not (await components.feature_store.get_user_features("alice")).recent_item_ids
    assert 2 in await components.metadata.consumed_item_ids("bob")
