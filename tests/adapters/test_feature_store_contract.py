"""The FeatureStore contract, run against every adapter (in-memory today; Redis joins with the
Recommend service)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import numpy as np
import pytest

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.ports.features import FeatureStore, UserEmbedding


@pytest.fixture(params=["in_memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[FeatureStore]:
    adapter: FeatureStore = InMemoryFeatureStore()
    yield adapter
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
