"""The FeatureStore contract, run against every adapter: in-memory and Redis (real server)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.ports.features import FeatureStore, ItemFeatures, UserEmbedding
from tests.support.services import require_redis


@pytest.fixture(params=["in_memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[FeatureStore]:
    if request.param == "in_memory":
        adapter: FeatureStore = InMemoryFeatureStore()
        yield adapter
        return
    import redis.asyncio as aioredis

    from recsys.adapters.redis.features import RedisFeatureStore

    url = require_redis()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    adapter = RedisFeatureStore(aioredis.Redis.from_url(url), namespace=namespace)
    try:
        yield adapter
    finally:
        cleaner = aioredis.Redis.from_url(url)
        keys = [key async for key in cleaner.scan_iter(match=f"{namespace}:*")]
        if keys:
            await cleaner.delete(*keys)
        await cleaner.aclose()
        await adapter.close()


def embedding(seed: int = 0) -> UserEmbedding:
    vector = np.random.default_rng(seed).normal(size=32).astype(np.float32)
    return UserEmbedding(vector, "emb-7", dt.datetime(2026, 11, 29, 10, tzinfo=dt.UTC))


async def test_missing_user_has_no_embedding(store: FeatureStore) -> None:
    assert await store.get_user_embedding("nobody") is None


async def test_put_then_get_returns_an_equal_copy(store: FeatureStore) -> None:
    original = embedding()
    await store.put_user_embedding("u1", original)
    original.vector[:] = 0  # the caller's later writes must not reach the store
    got = await store.get_user_embedding("u1")
    assert got is not None
    np.testing.assert_array_equal(got.vector, embedding().vector)
    assert got.vector.dtype == np.float32
    assert (got.embedding_version, got.generated_at) == ("emb-7", embedding().generated_at)


async def test_put_replaces(store: FeatureStore) -> None:
    await store.put_user_embedding("u1", embedding(1))
    await store.put_user_embedding("u1", embedding(2))
    got = await store.get_user_embedding("u1")
    assert got is not None
    np.testing.assert_array_equal(got.vector, embedding(2).vector)


async def test_delete_is_idempotent(store: FeatureStore) -> None:
    await store.put_user_embedding("u1", embedding())
    assert await store.delete_user("u1") >= 1
    assert await store.delete_user("u1") == 0
    assert await store.get_user_embedding("u1") is None


async def test_delete_leaves_a_user_whose_id_extends_it_alone(store: FeatureStore) -> None:
    for user in ("a", "a:b", "a:"):
        await store.put_user_embedding(user, embedding())
        await store.put_user_preferences(user, {"Drama": 1.0})
        await store.record_recent_interactions(user, [1, 2])
    deleted = await store.delete_user("a")
    assert deleted >= 2
    assert (await store.get_user_features("a")).empty
    for other in ("a:b", "a:"):
        kept = await store.get_user_features(other)
        assert kept.embedding is not None
        assert dict(kept.preferences) == {"Drama": 1.0}
        assert kept.recent_item_ids == (2, 1)
    assert await store.delete_user("a:b") == deleted  # the same records per user


async def test_item_features_in_order_with_defaults(store: FeatureStore) -> None:
    vector = np.arange(4, dtype=np.float32)
    await store.put_item_features(
        {7: ItemFeatures("Action", 0.9, 0.25, vector), 3: ItemFeatures("Drama", 0.1, 1.0)}
    )
    batch = await store.get_item_features([3, 99, 7])
    assert batch.categories == ["Drama", "", "Action"]
    assert batch.found.tolist() == [True, False, True]
    np.testing.assert_allclose(batch.popularity, [0.1, 0.0, 0.9])
    np.testing.assert_allclose(batch.freshness, [1.0, 0.0, 0.25])
    assert batch.embeddings is not None
    np.testing.assert_array_equal(batch.embeddings[2], vector)
    np.testing.assert_array_equal(batch.embeddings[0], np.zeros(4))
    empty = await store.get_item_features([])
    assert empty.categories == []


async def test_item_updates_are_visible(store: FeatureStore) -> None:
    await store.put_item_features({5: ItemFeatures("Action", 0.2, 0.2)})
    await store.get_item_features([5])
    await store.put_item_features({5: ItemFeatures("Comedy", 0.8, 0.2)})
    assert (await store.get_item_features([5])).categories == ["Comedy"]


async def test_user_features_in_one_read(store: FeatureStore) -> None:
    empty = await store.get_user_features("nobody")
    assert empty.empty
    await store.put_user_embedding("u1", embedding())
    await store.put_user_preferences("u1", {"Action": 0.8, "Drama": 0.2})
    await store.record_recent_interactions("u1", [5, 6])
    await store.record_recent_interactions("u1", [7], keep=2)
    features = await store.get_user_features("u1")
    assert features.embedding is not None
    np.testing.assert_array_equal(features.embedding.vector, embedding().vector)
    assert dict(features.preferences) == {"Action": 0.8, "Drama": 0.2}
    assert features.recent_item_ids == (7, 6)  # newest first, at most `keep`
    assert await store.delete_user("u1") >= 2
    assert (await store.get_user_features("u1")).empty


async def test_recent_interactions_expire(store: FeatureStore) -> None:
    import asyncio

    await store.record_recent_interactions("u2", [1], ttl_seconds=1)
    assert (await store.get_user_features("u2")).recent_item_ids == (1,)
    await asyncio.sleep(1.2)
    assert (await store.get_user_features("u2")).recent_item_ids == ()


async def test_a_feature_snapshot_loads_through_the_port(
    store: FeatureStore, tmp_path: Path
) -> None:
    from recsys.data.features_file import (
        FeatureSnapshot,
        load_features,
        load_into_store,
        save_features,
    )

    rng = np.random.default_rng(4)
    snapshot = FeatureSnapshot(
        embedding_version="als-1",
        generated_at=dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
        user_ids=["u1", "u2", "u3"],
        user_vectors=rng.normal(size=(3, 8)).astype(np.float32),
        preference_categories=["", "Drama", "Horror"],
        user_preferences=np.array([[0, 1, 0.5], [0, 0, 0], [0, 0.2, 1]], np.float32),
        item_ids=np.array([10, 11], np.int64),
        item_categories=["Drama", "Horror"],
        item_popularity=np.array([0.9, 0.1], np.float32),
        item_freshness=np.array([0.3, 0.7], np.float32),
        item_vectors=rng.normal(size=(2, 8)).astype(np.float32),
        default_user_vector=np.zeros(8, np.float32),
    )
    path = tmp_path / "features.npz"
    save_features(path, snapshot)
    await load_into_store(load_features(path), store, batch=2)

    first = await store.get_user_features("u1")
    assert first.embedding is not None
    assert first.embedding.embedding_version == "als-1"
    np.testing.assert_array_equal(first.embedding.vector, snapshot.user_vectors[0])
    assert dict(first.preferences) == pytest.approx({"Drama": 1.0, "Horror": 0.5})
    assert dict((await store.get_user_features("u2")).preferences) == {}
    items = await store.get_item_features([11, 10, 12])
    assert items.categories == ["Horror", "Drama", ""]
    assert items.found.tolist() == [True, True, False]
    assert items.embeddings is not None
    np.testing.assert_array_equal(items.embeddings[0], snapshot.item_vectors[1])
    default = await store.get_default_user_embedding()
    assert default is not None
    assert default.embedding_version == "als-1"


def test_a_file_that_is_not_a_feature_snapshot_is_refused(tmp_path: Path) -> None:
    from recsys.data.features_file import load_features
    from recsys.errors import ConfigurationError

    path = tmp_path / "other.npz"
    np.savez(path, vectors=np.zeros((2, 2)))
    with pytest.raises(ConfigurationError, match="not a feature snapshot"):
        load_features(path)
