"""The ItemCounters contract, run against every adapter: in-memory, Redis (the real standalone
server) and a 3-master Redis Cluster (a namespace of its own per test, removed afterwards).
Values are compared with the direct sum (`recount`) of the events, each counted once however
often it was delivered."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from recsys.adapters.counters.in_memory import InMemoryItemCounters
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.domain.popularity import recount
from recsys.ports.counters import Counter, ItemCounters
from recsys.settings import load_settings
from tests.support.redis_cluster import REDIS_KINDS, redis_client, remove_keys

POPULARITY_HALF_LIFE = 7 * 86_400.0
TRENDING_HALF_LIFE = 3600.0
HALF_LIVES = {Counter.POPULARITY: POPULARITY_HALF_LIFE, Counter.TRENDING: TRENDING_HALF_LIFE}
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)

Make = Callable[..., ItemCounters]


@pytest.fixture(params=["in_memory", *REDIS_KINDS])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Builds counters of the parameter's kind (wall clock at NOW; all of one test share the
    Redis namespace) and closes them afterwards."""
    made: list[ItemCounters] = []
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = None if request.param == "in_memory" else redis_client(request, request.param)

    def build(event_marker_ttl_seconds: int = 3600) -> ItemCounters:
        adapter: ItemCounters
        if client is None:
            adapter = InMemoryItemCounters(
                popularity_half_life_seconds=POPULARITY_HALF_LIFE,
                trending_half_life_seconds=TRENDING_HALF_LIFE,
                event_marker_ttl_seconds=event_marker_ttl_seconds,
                clock=lambda: NOW,
            )
        else:
            from recsys.adapters.redis.counters import RedisItemCounters

            adapter = RedisItemCounters(
                redis_client(request, request.param),
                namespace=namespace,
                popularity_half_life_seconds=POPULARITY_HALF_LIFE,
                trending_half_life_seconds=TRENDING_HALF_LIFE,
                event_marker_ttl_seconds=event_marker_ttl_seconds,
                clock=lambda: NOW,
            )
        made.append(adapter)
        return adapter

    try:
        yield build
    finally:
        if client is not None:
            await remove_keys(client, namespace)
            await client.aclose()
        for adapter in made:
            await adapter.close()


@pytest.fixture
def counters(make: Make) -> ItemCounters:
    return make()


def event(
    event_id: str,
    item_id: int,
    seconds_ago: float = 0.0,
    kind: InteractionKind = InteractionKind.VIEW,
    value: float = 0.0,
) -> Interaction:
    moment = NOW - dt.timedelta(seconds=seconds_ago)
    return Interaction(event_id, "u1", item_id, kind, value, moment)


async def test_a_redelivered_event_is_not_counted_twice(counters: ItemCounters) -> None:
    first = [event("e1", 1), event("e2", 1, 60), event("e3", 2, 120, InteractionKind.LIKE)]
    assert await counters.record(first) == 3
    assert await counters.record(first) == 0
    assert await counters.record([first[1], event("e4", 2), first[2]]) == 1
    unique = [*first, event("e4", 2)]
    for counter, half_life in HALF_LIVES.items():
        expected = recount(unique, half_life, NOW)
        assert await counters.values(counter, [1, 2]) == pytest.approx(expected, rel=1e-9, abs=0)


async def test_values_equal_the_direct_sum_whatever_the_batches(counters: ItemCounters) -> None:
    rng = random.Random(11)
    kinds = list(InteractionKind)
    events = [
        event(
            f"e{index}",
            rng.randrange(10),
            rng.uniform(0, 3 * 86_400),
            rng.choice(kinds),
            rng.uniform(0, 5),
        )
        for index in range(300)
    ]
    # Batches of random sizes, in random order, some events delivered twice.
    deliveries = events + rng.sample(events, 60)
    rng.shuffle(deliveries)
    new = 0
    while deliveries:
        size = rng.randint(1, 40)
        batch, deliveries = deliveries[:size], deliveries[size:]
        new += await counters.record(list({item.event_id: item for item in batch}.values()))
    assert new == sum(item.kind is not InteractionKind.SKIP for item in events)
    items = [*range(10), 99]
    for counter, half_life in HALF_LIVES.items():
        for now in (NOW, NOW + dt.timedelta(hours=5)):
            got = await counters.values(counter, items, now=now)
            expected = recount(events, half_life, now)
            assert got[99] == 0.0
            for item in range(10):
                assert got[item] == pytest.approx(expected.get(item, 0.0), rel=1e-9, abs=0)


async def test_counters_decay_by_their_half_lives(counters: ItemCounters) -> None:
    await counters.record([event("e1", 1, 0, InteractionKind.PURCHASE)])
    assert await counters.values(Counter.POPULARITY, [1]) == pytest.approx({1: 5.0})
    assert await counters.values(Counter.TRENDING, [1]) == pytest.approx({1: 5.0})
    hour_later = NOW + dt.timedelta(hours=1)
    assert await counters.values(Counter.TRENDING, [1], now=hour_later) == pytest.approx({1: 2.5})
    week_later = NOW + dt.timedelta(days=7)
    assert await counters.values(Counter.POPULARITY, [1], now=week_later) == pytest.approx({1: 2.5})
    assert await counters.values(Counter.POPULARITY, []) == {}


async def test_top_orders_by_counter_then_item_id(counters: ItemCounters) -> None:
    # Equal counters: one view each at the same time. As text "10" < "100" < "11" < "9".
    await counters.record([event(f"view-{item}", item, 60) for item in (11, 9, 100, 10)])
    # A purchase a day ago leads popularity; trending has all but forgotten it.
    await counters.record([event("buy", 5, 86_400, InteractionKind.PURCHASE)])
    assert await counters.top(Counter.POPULARITY, 10) == [5, 9, 10, 11, 100]
    assert await counters.top(Counter.POPULARITY, 3) == [5, 9, 10]
    assert await counters.top(Counter.TRENDING, 2) == [9, 10]
    assert await counters.top(Counter.TRENDING, 10) == [9, 10, 11, 100, 5]
    assert await counters.top(Counter.TRENDING, 0) == []


async def test_skips_and_events_without_a_time_count_nothing(counters: ItemCounters) -> None:
    untimed = Interaction("untimed", "u1", 2, InteractionKind.VIEW, 0.0, None)
    assert await counters.record([event("skip", 1, 0, InteractionKind.SKIP), untimed]) == 0
    assert await counters.values(Counter.POPULARITY, [1, 2]) == {1: 0.0, 2: 0.0}
    assert await counters.top(Counter.POPULARITY, 5) == []


async def test_an_event_after_the_clock_counts_at_the_clock(counters: ItemCounters) -> None:
    await counters.record([event("ahead", 1, -86_400)])
    assert await counters.values(Counter.TRENDING, [1]) == pytest.approx({1: 1.0})


async def test_an_event_id_is_forgotten_after_the_marker_ttl(make: Make) -> None:
    counters = make(event_marker_ttl_seconds=1)
    assert await counters.record([event("e1", 1)]) == 1
    assert await counters.record([event("e1", 1)]) == 0
    await asyncio.sleep(1.2)
    assert await counters.record([event("e1", 1)]) == 1
    assert await counters.values(Counter.POPULARITY, [1]) == pytest.approx({1: 2.0})


async def test_both_adapters_take_their_half_lives_and_marker_ttl_from_settings() -> None:
    from recsys.adapters.redis.counters import RedisItemCounters
    from recsys.registry import create_adapter

    settings = load_settings(
        realtime={
            "popularity_half_life_hours": 24,
            "trending_half_life_minutes": 30,
            "event_marker_ttl_seconds": 600,
        }
    )
    for name, kind in (("in_memory", InMemoryItemCounters), ("redis", RedisItemCounters)):
        adapter = create_adapter("item_counters", name, settings)
        assert isinstance(adapter, kind)
        assert adapter.half_lives == {Counter.POPULARITY: 86_400, Counter.TRENDING: 1800}
        assert adapter.event_marker_ttl_seconds == 600
        await adapter.close()


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_redis_keys_are_the_counters_sets_and_expiring_markers_in_one_slot(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """One script writes both sets and the markers: on a cluster they share a hash tag, so one
    slot."""
    from redis.crc import key_slot

    from recsys.adapters.redis.counters import RedisItemCounters

    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = redis_client(request, kind)
    counters = RedisItemCounters(
        redis_client(request, kind), namespace=namespace, event_marker_ttl_seconds=600
    )
    try:
        # Ids that hash to other slots on their own, one of them with a hash tag of its own.
        assert await counters.record([event("e:1", 7), event("{x}2", 8)]) == 2
        keys = {key async for key in client.scan_iter(match=f"{namespace}:*")}
        # The tag on a cluster only: a standalone server keeps the names it had before.
        tag = "{counters}:" if kind == "redis_cluster" else ""
        assert {key.decode() for key in keys} == {
            f"{namespace}:item_counters:{tag}popularity",
            f"{namespace}:item_counters:{tag}trending",
            f"{namespace}:counted:{tag}e:1",
            f"{namespace}:counted:{tag}{{x}}2",
        }
        if kind == "redis_cluster":
            assert {key_slot(key) for key in keys} == {key_slot(b"counters")}
        # The configured TTL (not the 7-day default), whatever time the machine took since.
        assert 0 < await client.ttl(f"{namespace}:counted:{tag}e:1") <= 600
        trending = f"{namespace}:item_counters:{tag}trending"
        assert await client.ttl(trending) == -1
        assert await client.zrange(trending, 0, -1) == [b"7", b"8"]
    finally:
        await remove_keys(client, namespace)
        await client.aclose()
        await counters.close()
