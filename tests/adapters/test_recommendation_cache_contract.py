"""The RecommendationCache contract, run against every adapter: in-memory, Redis (the real
standalone server) and a 3-master Redis Cluster (a key prefix of its own per test, removed
afterwards)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from recsys.adapters.cache.in_memory import InMemoryRecommendationCache
from recsys.ports.cache import (
    KINDS,
    PRECOMPUTED,
    RESPONSES,
    CachedItem,
    CachedRecommendations,
    RecommendationCache,
)
from tests.support.redis_cluster import REDIS_KINDS, redis_client, remove_keys

# The Redis adapter deletes a user's entries under these surfaces and, through the user's
# surface set, any other.
CONFIGURED_SURFACES = ("homepage",)


@pytest.fixture(params=["in_memory", *REDIS_KINDS])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[RecommendationCache]:
    if request.param == "in_memory":
        yield InMemoryRecommendationCache()
        return
    from recsys.adapters.cache.redis import RedisRecommendationCache

    client = redis_client(request, request.param)
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    adapter = RedisRecommendationCache(client, namespace=namespace, surfaces=CONFIGURED_SURFACES)
    try:
        yield adapter
    finally:
        await remove_keys(client, namespace)
        await adapter.close()


def answer(*item_ids: int, model_version: str = "ranker:1") -> CachedRecommendations:
    return CachedRecommendations(
        items=tuple(
            CachedItem(item, 1.0 / (rank + 1), "Drama", "personalized", "Matches your taste")
            for rank, item in enumerate(item_ids)
        ),
        model_version=model_version,
        index_version="index-3",
        explanation="Picked for you",
        ranking_backend="model",
        extra={"note": "kept"},
    )


async def test_a_missing_entry_is_none(cache: RecommendationCache) -> None:
    for kind in KINDS:
        assert await cache.get(kind, "nobody", "homepage") is None


async def test_put_then_get_returns_an_equal_value(cache: RecommendationCache) -> None:
    value = answer(7, 3, 9)
    await cache.put(RESPONSES, "u1", "homepage", value, ttl_seconds=60)
    assert await cache.get(RESPONSES, "u1", "homepage") == value


async def test_put_replaces(cache: RecommendationCache) -> None:
    await cache.put(RESPONSES, "u1", "homepage", answer(1), ttl_seconds=60)
    await cache.put(
        RESPONSES, "u1", "homepage", answer(2, model_version="ranker:2"), ttl_seconds=60
    )
    assert await cache.get(RESPONSES, "u1", "homepage") == answer(2, model_version="ranker:2")


async def test_entries_are_separate_per_kind_user_and_surface(cache: RecommendationCache) -> None:
    await cache.put(RESPONSES, "u1", "homepage", answer(1), ttl_seconds=60)
    await cache.put(PRECOMPUTED, "u1", "homepage", answer(2), ttl_seconds=60)
    await cache.put(RESPONSES, "u1", "search", answer(3), ttl_seconds=60)
    await cache.put(RESPONSES, "u2", "homepage", answer(4), ttl_seconds=60)
    assert await cache.get(RESPONSES, "u1", "homepage") == answer(1)
    assert await cache.get(PRECOMPUTED, "u1", "homepage") == answer(2)
    assert await cache.get(RESPONSES, "u1", "search") == answer(3)
    assert await cache.get(RESPONSES, "u2", "homepage") == answer(4)
    assert await cache.get(PRECOMPUTED, "u2", "homepage") is None


async def test_an_entry_expires_after_its_ttl(cache: RecommendationCache) -> None:
    await cache.put(RESPONSES, "u1", "homepage", answer(1), ttl_seconds=1)
    await cache.put(PRECOMPUTED, "u1", "homepage", answer(2), ttl_seconds=60)
    assert await cache.get(RESPONSES, "u1", "homepage") == answer(1)
    await asyncio.sleep(1.2)
    assert await cache.get(RESPONSES, "u1", "homepage") is None
    assert await cache.get(PRECOMPUTED, "u1", "homepage") == answer(2)


async def test_delete_user_erases_every_kind_and_surface_of_that_user_only(
    cache: RecommendationCache,
) -> None:
    # "search" is not a configured surface: erasure must find it all the same.
    for kind in KINDS:
        for surface in ("homepage", "search"):
            await cache.put(kind, "u1", surface, answer(1), ttl_seconds=60)
    await cache.put(RESPONSES, "u2", "homepage", answer(2), ttl_seconds=60)
    await cache.put(RESPONSES, "u10", "homepage", answer(3), ttl_seconds=60)

    assert await cache.delete_user("u1") == 4
    for kind in KINDS:
        for surface in ("homepage", "search"):
            assert await cache.get(kind, "u1", surface) is None
    assert await cache.get(RESPONSES, "u2", "homepage") == answer(2)
    assert await cache.get(RESPONSES, "u10", "homepage") == answer(3)
    assert await cache.delete_user("u1") == 0  # idempotent
    assert await cache.delete_user("nobody") == 0
    assert await cache.delete_user("u*") == 0  # an id, not a pattern
    assert await cache.get(RESPONSES, "u2", "homepage") == answer(2)


async def test_delete_user_leaves_a_user_whose_id_extends_it_alone(
    cache: RecommendationCache,
) -> None:
    """Ids may contain ':': user "a" with surface "b:homepage" and user "a:b" with surface
    "homepage" are different entries, and erasing "a" touches neither of "a:b"'s."""
    await cache.put(RESPONSES, "a", "homepage", answer(1), ttl_seconds=60)
    await cache.put(PRECOMPUTED, "a", "b:homepage", answer(2), ttl_seconds=60)
    for kind in KINDS:
        for surface in ("homepage", "cart"):
            await cache.put(kind, "a:b", surface, answer(3), ttl_seconds=60)
    assert await cache.get(PRECOMPUTED, "a:b", "homepage") == answer(3)

    assert await cache.delete_user("a") == 2  # only a's entries, and counted as such
    assert await cache.get(RESPONSES, "a", "homepage") is None
    assert await cache.get(PRECOMPUTED, "a", "b:homepage") is None
    for kind in KINDS:
        for surface in ("homepage", "cart"):
            assert await cache.get(kind, "a:b", surface) == answer(3)
    assert await cache.delete_user("a:b") == 4


async def test_invalidate_responses_drops_every_surfaces_answer_but_keeps_precomputed(
    cache: RecommendationCache,
) -> None:
    # "search" is not a configured surface: its answer goes all the same.
    for kind in KINDS:
        for surface in ("homepage", "search"):
            await cache.put(kind, "u1", surface, answer(1), ttl_seconds=60)
    await cache.put(RESPONSES, "u1:x", "homepage", answer(2), ttl_seconds=60)

    assert await cache.invalidate_responses(["u1"]) == 2
    for surface in ("homepage", "search"):
        assert await cache.get(RESPONSES, "u1", surface) is None
        assert await cache.get(PRECOMPUTED, "u1", surface) == answer(1)
    assert await cache.get(RESPONSES, "u1:x", "homepage") == answer(2)
    assert await cache.invalidate_responses(["u1"]) == 0
    assert await cache.invalidate_responses(["nobody", "u1"]) == 0
    # Erasure still finds the pre-computed answer under the surface that is not configured.
    assert await cache.delete_user("u1") == 2
    assert await cache.get(PRECOMPUTED, "u1", "search") is None


async def test_an_unknown_kind_is_refused(cache: RecommendationCache) -> None:
    with pytest.raises(ValueError, match="unknown cache kind 'responses'"):
        await cache.put("responses", "u1", "homepage", answer(1), ttl_seconds=60)
    with pytest.raises(ValueError, match="unknown cache kind 'responses'"):
        await cache.get("responses", "u1", "homepage")
    assert await cache.delete_user("u1") == 0  # nothing was written


async def test_a_ttl_under_one_second_is_refused(cache: RecommendationCache) -> None:
    with pytest.raises(ValueError, match="at least 1 second"):
        await cache.put(RESPONSES, "u1", "homepage", answer(1), ttl_seconds=0)
    assert await cache.get(RESPONSES, "u1", "homepage") is None


async def test_in_memory_keeps_at_most_max_entries_dropping_the_least_recent() -> None:
    cache = InMemoryRecommendationCache(max_entries=2)
    await cache.put(RESPONSES, "u1", "homepage", answer(1), ttl_seconds=60)
    await cache.put(RESPONSES, "u2", "homepage", answer(2), ttl_seconds=60)
    await cache.get(RESPONSES, "u1", "homepage")  # u1 is now the most recent
    await cache.put(RESPONSES, "u3", "homepage", answer(3), ttl_seconds=60)
    assert await cache.get(RESPONSES, "u2", "homepage") is None
    assert await cache.get(RESPONSES, "u1", "homepage") == answer(1)
    assert await cache.get(RESPONSES, "u3", "homepage") == answer(3)
