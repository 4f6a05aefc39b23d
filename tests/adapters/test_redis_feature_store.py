"""Redis specifics: the read-through item cache, binary vectors, and outages as RecsysErrors."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from recsys.adapters.redis.features import ItemCache, RedisFeatureStore, decode_vector
from recsys.errors import Unavailable
from recsys.ports.features import ItemFeatures
from tests.support.redis_cluster import REDIS_KINDS, redis_client, remove_keys
from tests.support.services import require_redis

pytestmark = pytest.mark.integration


async def test_item_cache_serves_repeated_reads_until_its_ttl() -> None:
    url = require_redis()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(url)
    store = RedisFeatureStore(client, namespace=namespace, item_cache_ttl_seconds=60)
    try:
        await store.put_item_features({1: ItemFeatures("Action", 0.5, 0.5, np.ones(3, np.float32))})
        assert (await store.get_item_features([1])).categories == ["Action"]
        raw = await client.hget(f"{namespace}:item_features:1", "embedding")
        assert raw == np.ones(3, "<f4").tobytes()  # compact binary vector, 12 bytes
        await client.delete(f"{namespace}:item_features:1")  # behind the cache's back
        assert (await store.get_item_features([1])).categories == ["Action"]  # from the cache
        uncached = RedisFeatureStore(client, namespace=namespace, item_cache_ttl_seconds=0)
        assert (await uncached.get_item_features([1])).categories == [""]
    finally:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await store.close()


def test_item_cache_is_bounded_and_expires() -> None:
    cache = ItemCache(ttl_seconds=10, max_items=2)
    for item in (1, 2, 3):
        cache.put(item, ItemFeatures("x", 0, 0), now=0)
    assert len(cache) == 2
    assert cache.get(1, now=1) == (False, None)  # least recently used went first
    assert cache.get(3, now=1)[0]
    assert not cache.get(3, now=11)[0]
    np.testing.assert_array_equal(decode_vector(np.arange(2, dtype="<f4").tobytes()), [0, 1])


def test_an_unknown_item_is_remembered_only_for_the_miss_ttl() -> None:
    cache = ItemCache(ttl_seconds=60, max_items=10, miss_ttl_seconds=1)
    cache.put(1, None, now=0)
    cache.put(2, ItemFeatures("x", 0, 0), now=0)
    assert cache.get(1, now=0.5) == (True, None)
    assert cache.get(1, now=1.5) == (False, None)  # asked again: Redis decides
    assert cache.get(2, now=59)[0]
    never = ItemCache(ttl_seconds=60, max_items=10, miss_ttl_seconds=0)
    never.put(1, None, now=0)
    assert never.get(1, now=0) == (False, None)
    assert len(never) == 0
    capped = ItemCache(ttl_seconds=0.5, max_items=10, miss_ttl_seconds=5)
    capped.put(1, None, now=0)
    assert not capped.get(1, now=0.6)[0]  # never longer than the TTL of found items


async def test_an_item_loaded_after_a_miss_is_found_within_the_miss_ttl() -> None:
    """Redis restarted empty (or a snapshot is being loaded): the items read meanwhile are
    missing, and must be served with their features soon after they are written by another
    process, not after the whole item_cache_ttl."""
    import asyncio

    url = require_redis()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(url)
    serving = RedisFeatureStore(
        client, namespace=namespace, item_cache_ttl_seconds=60, item_cache_miss_ttl_seconds=0.3
    )
    loader = RedisFeatureStore(aioredis.Redis.from_url(url), namespace=namespace)
    try:
        missing = await serving.get_item_features([1, 2])
        assert missing.found.tolist() == [False, False]
        await loader.put_item_features({1: ItemFeatures("Action", 0.5, 0.5)})
        await asyncio.sleep(0.4)
        found = await serving.get_item_features([1, 2])
        assert found.found.tolist() == [True, False]
        assert found.categories == ["Action", ""]
        # The found item is cached for the full TTL now: gone from Redis, still served.
        await client.delete(f"{namespace}:item_features:1")
        assert (await serving.get_item_features([1])).found.tolist() == [True]
    finally:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await serving.close()
        await loader.close()


def test_the_miss_ttl_comes_from_the_settings() -> None:
    from recsys.settings import load_settings

    settings = load_settings(
        features={"item_cache_ttl_seconds": 30, "item_cache_miss_ttl_seconds": 0.5}
    )
    store = RedisFeatureStore.from_settings(settings)
    assert (store.item_cache.ttl, store.item_cache.miss_ttl) == (30, 0.5)
    assert load_settings().features.item_cache_miss_ttl_seconds == 1.0


async def test_redis_down_is_unavailable_and_fails_fast() -> None:
    import time

    from recsys.adapters.redis.connection import create_client
    from recsys.settings import RedisSettings

    client = create_client(RedisSettings(url="redis://127.0.0.1:1/0"))
    store = RedisFeatureStore(client, namespace="down")
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await store.get_user_embedding("u1")
    assert caught.value.reason == "REDIS_DOWN"
    with pytest.raises(Unavailable):
        await store.get_item_features([1, 2])
    assert time.monotonic() - started < 1.0  # no multi-second reconnect backoff
    await store.close()


def test_the_recent_window_comes_from_the_settings() -> None:
    from recsys.settings import load_settings

    settings = load_settings(realtime={"recent_window_seconds": 120, "recent_keep": 7})
    store = RedisFeatureStore.from_settings(settings)
    assert (store.recent_window_seconds, store.recent_keep) == (120, 7)


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_recent_items_are_a_sorted_set_of_event_times_that_expires_with_the_window(
    request: pytest.FixtureRequest, kind: str
) -> None:
    import datetime as dt

    from recsys.domain.interactions import Interaction, InteractionKind

    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = redis_client(request, kind)
    store = RedisFeatureStore(client, namespace=namespace, recent_window_seconds=120)
    moment = dt.datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    try:
        await store.record_events(
            [Interaction("e1", "u1", 42, InteractionKind.CLICK, 0.0, moment)],
            now=moment + dt.timedelta(seconds=1),
        )
        key = store.keys.user_recent("u1")
        assert await client.type(key) == b"zset"
        assert await client.zrange(key, 0, -1, withscores=True) == [(b"42", 1_796_126_400_250.0)]
        assert 0 < await client.ttl(key) <= 120  # the window, not the 30-minute default
    finally:
        await remove_keys(client, namespace)
        await store.close()


async def test_a_recent_list_of_the_earlier_layout_reads_as_empty_and_is_replaced() -> None:
    import datetime as dt

    from recsys.domain.interactions import Interaction, InteractionKind

    url = require_redis()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(url)
    store = RedisFeatureStore(client, namespace=namespace)
    key = store.keys.user_recent("u1")
    try:
        await client.lpush(key, 5, 6)
        await client.hset(store.keys.user_features("u1"), "preferences", '{"Drama": 1.0}')
        features = await store.get_user_features("u1")
        assert (dict(features.preferences), features.recent_item_ids) == ({"Drama": 1.0}, ())
        now = dt.datetime.now(dt.UTC)
        await store.record_events([Interaction("e1", "u1", 7, InteractionKind.VIEW, 0.0, now)])
        assert (await store.get_user_features("u1")).recent_item_ids == (7,)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await store.close()


async def test_the_batched_item_read_equals_the_pipeline_with_absent_items_empty() -> None:
    url = require_redis()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(url)
    store = RedisFeatureStore(client, namespace=namespace, item_cache_ttl_seconds=0)
    try:
        await store.put_item_features(
            {
                item: ItemFeatures(f"c{item}", item / 10, 0.5, np.full(4, item, np.float32))
                for item in (3, 1, 2)
            }
        )
        keys = [store.keys.item_features(item) for item in (2, 9, 1, 3, 2)]
        script = await store.read_item_fields(keys, batched=True)
        assert script == await store.read_item_fields(keys, batched=False)
        assert script[1] == {}  # absent: empty, in its place
        assert script[0][b"category"] == b"c2"
        assert script[4] == script[0]
        batch = await store.get_item_features([2, 9, 1])  # standalone: the batched read
        assert batch.categories == ["c2", "", "c1"]
        assert batch.found.tolist() == [True, False, True]
    finally:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await store.close()
