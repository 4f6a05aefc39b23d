"""The Redis key layout of the three per-user adapters (features, cache, rate limit): a user's
keys carry the user's hash tag, never the id, all land in one cluster slot, and erasure deletes
exactly that user's keys (ids may contain ':', so one id can extend another). On the standalone
server and on a 3-master Redis Cluster, where the server itself says which slot a key is in."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from recsys.adapters.cache.redis import RedisRecommendationCache
from recsys.adapters.rate_limit.redis import RedisRateLimiter
from recsys.adapters.redis.connection import RedisClient, user_tag
from recsys.adapters.redis.features import RedisFeatureStore
from recsys.domain.erasure import hashed_subject
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.ports.cache import KINDS, PRECOMPUTED, RESPONSES, CachedItem, CachedRecommendations
from recsys.ports.features import UserEmbedding
from tests.support.redis_cluster import REDIS_KINDS, redis_client, remove_keys

pytestmark = pytest.mark.integration

SURFACES = ("homepage", "cart", "email")
VICTIM = "user77"
NEIGHBOUR = "user77:homepage"  # the id that the old prefix scan of "user77" also matched
# Keys of no user that the per-user adapters keep: the count of users per embedding version
# (one key; on a cluster one per slot, `embedding_versions:{n}`, in the slot of the users it
# counts).
SHARED_PREFIX = "embedding_versions"


@dataclass
class Stores:
    client: RedisClient
    namespace: str
    features: RedisFeatureStore
    cache: RedisRecommendationCache
    limiter: RedisRateLimiter

    async def all_keys(self) -> set[bytes]:
        return {key async for key in self.client.scan_iter(match=f"{self.namespace}:*")}

    async def keys(self) -> set[bytes]:
        """The per-user keys: all but the shared ones."""
        shared = f"{self.namespace}:{SHARED_PREFIX}".encode()
        return {key for key in await self.all_keys() if not key.startswith(shared)}

    async def erase(self, user_id: str) -> int:
        return (
            await self.features.delete_user(user_id)
            + await self.cache.delete_user(user_id)
            + await self.limiter.reset(user_id)
        )


@pytest.fixture(params=REDIS_KINDS)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    kind = request.param
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = redis_client(request, kind)
    made = Stores(
        client,
        namespace,
        RedisFeatureStore(redis_client(request, kind), namespace=namespace),
        RedisRecommendationCache(
            redis_client(request, kind), namespace=namespace, surfaces=SURFACES
        ),
        RedisRateLimiter(
            redis_client(request, kind), namespace=namespace, limit=100, window_seconds=60
        ),
    )
    try:
        yield made
    finally:
        await remove_keys(client, namespace)
        for adapter in (made.features, made.cache, made.limiter):
            await adapter.close()
        await client.aclose()


async def fill(stores: Stores, user_id: str) -> None:
    """Every kind of per-user key: features, recent items, both cache kinds on two surfaces
    (one of them not configured), the rate-limit counter."""
    vector = np.ones(4, np.float32)
    await stores.features.put_user_embedding(
        user_id, UserEmbedding(vector, "e1", dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    )
    await stores.features.put_user_preferences(user_id, {"Drama": 1.0})
    now = dt.datetime.now(dt.UTC)
    await stores.features.record_events(
        [
            Interaction(
                f"{user_id}-{item}",
                user_id,
                item,
                InteractionKind.VIEW,
                0.0,
                now - dt.timedelta(seconds=3 - item),  # item 2 is the newest
            )
            for item in (1, 2)
        ]
    )
    value = CachedRecommendations(items=(CachedItem(1, 0.5),), model_version="m")
    for kind in KINDS:
        for surface in ("cart", "search"):
            await stores.cache.put(kind, user_id, surface, value, ttl_seconds=60)
    await stores.limiter.hit(user_id)


def test_the_user_tag_is_the_audit_subject_as_a_hash_tag() -> None:
    digest = hashlib.sha256(NEIGHBOUR.encode()).hexdigest()[:32]
    assert user_tag(NEIGHBOUR) == "{" + digest + "}"
    assert hashed_subject(NEIGHBOUR) == "sha256:" + digest


async def test_a_users_keys_carry_its_tag_not_its_id_and_share_one_slot(stores: Stores) -> None:
    await fill(stores, VICTIM)
    keys = await stores.keys()
    (counts,) = await stores.all_keys() - keys
    tag = user_tag(VICTIM).encode()
    # features, recent, 2 kinds x 2 surfaces, the surface set, the counter
    assert len(keys) == 8
    assert all(tag in key for key in keys)
    assert not any(VICTIM.encode() in key for key in keys)
    assert len({key_slot(key) for key in keys}) == 1
    if stores.features.keys.cluster:
        # The server agrees, and the counts the user's writes change are in the same slot.
        cluster = cast(RedisCluster, stores.client)
        slots = {await cluster.cluster_keyslot(key.decode()) for key in [*keys, counts]}
        assert slots == {key_slot(tag)}
        assert counts.startswith(f"{stores.namespace}:embedding_versions:{{".encode())
    else:
        assert counts == f"{stores.namespace}:embedding_versions".encode()
    namespace = stores.namespace
    assert {key.decode().replace(user_tag(VICTIM), "{U}") for key in keys} == {
        f"{namespace}:user_features:{{U}}",
        f"{namespace}:user_recent:{{U}}",
        f"{namespace}:recommendations:{{U}}:cart",
        f"{namespace}:recommendations:{{U}}:search",
        f"{namespace}:precomputed:{{U}}:cart",
        f"{namespace}:precomputed:{{U}}:search",
        f"{namespace}:cached_surfaces:{{U}}",
        f"{namespace}:rate_limit:recommendations:{{U}}",
    }
    for key in keys:  # everything but the feature records expires
        if b":user_features:" not in key:
            assert 0 < await stores.client.ttl(key) <= 1800


async def test_erasure_deletes_exactly_the_users_keys_and_counts_only_them(
    stores: Stores,
) -> None:
    await fill(stores, VICTIM)
    victims = await stores.keys()
    await fill(stores, NEIGHBOUR)
    await fill(stores, "user7")
    before = await stores.keys()

    # features + recent, 4 cache entries (the surface set is bookkeeping), the counter
    assert await stores.erase(VICTIM) == 7
    assert await stores.keys() == before - victims
    assert await stores.erase(VICTIM) == 0  # idempotent
    assert await stores.features.embedding_version_counts() == {"e1": 2}
    neighbour = await stores.features.get_user_features(NEIGHBOUR)
    assert neighbour.embedding is not None
    assert neighbour.recent_item_ids == (2, 1)
    for kind in (RESPONSES, PRECOMPUTED):
        assert await stores.cache.get(kind, NEIGHBOUR, "search") is not None
    assert (await stores.limiter.hit(NEIGHBOUR)).remaining == 98
