"""DeleteUserData on real Redis and PostgreSQL touches only its user: ids may contain ':', and
erasing "a" must leave every key and row of "a:b" alone, count only "a"'s keys, and leave a
tombstone for "a" alone."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from recsys.adapters.redis.connection import user_tag
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.grpc_server.app import GrpcApplication
from recsys.ports.features import UserEmbedding
from recsys.ports.metadata import UserProfile
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.services import require_redis
from tests.support.world import catalogue, world_on_shared_stores

pytestmark = pytest.mark.integration

USERS = ("a", "a:b", "a:homepage")


@dataclass
class Deployment:
    app: GrpcApplication
    redis: aioredis.Redis
    namespace: str


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    async with world_on_shared_stores(
        tmp_path,
        redis={"socket_timeout_ms": 2000},
        features={"store": "redis"},
        recommend={"cache": "redis", "feature_timeout_ms": 2000, "cache_timeout_ms": 2000},
        rate_limit={"limiter": "redis"},
    ) as stores:
        direct = aioredis.Redis.from_url(require_redis())
        try:
            yield Deployment(stores.app, direct, stores.namespace)
        finally:
            await direct.aclose()


async def keys_of(deployment: Deployment, user_id: str) -> set[bytes]:
    tag = user_tag(user_id).encode()
    return {
        key
        async for key in deployment.redis.scan_iter(match=f"{deployment.namespace}:*")
        if tag in key
    }


async def test_erasing_a_user_leaves_users_whose_ids_extend_it_alone(
    deployment: Deployment,
) -> None:
    components = deployment.app.components
    vectors, _ = catalogue()
    now = dt.datetime.now(dt.UTC)
    await components.metadata.upsert_users([UserProfile(user, 30, "US") for user in USERS])
    for row, user in enumerate(USERS):
        await components.feature_store.put_user_embedding(
            user, UserEmbedding(vectors[row], "e1", now)
        )
        await components.feature_store.put_user_preferences(user, {"Drama": 0.5})
        await components.metadata.record_interactions(
            [Interaction(f"{user}-{item}", user, item, InteractionKind.CLICK, 1.0, now)
             for item in (20, 21)]
        )  # fmt: skip
    options = ClientOptions(target=deployment.app.address, timeout_seconds=10, retry=None)
    async with AsyncRecsysClient(options) as client:
        for user in USERS:
            for surface in ("homepage", "cart"):
                await client.recommend(user, surface=surface, limit=5)
        before = {user: await keys_of(deployment, user) for user in USERS}
        assert all(before.values())
        erased = await client.delete_user_data("a")

    # Everything of "a" went, and the count names "a"'s records only (its surface set, the
    # cache's bookkeeping, is not a record of the user).
    assert await keys_of(deployment, "a") == set()
    assert erased.deleted_keys == len([k for k in before["a"] if b":cached_surfaces:" not in k])
    assert erased.deleted_interactions == 2
    assert erased.profile_erased
    for user in ("a:b", "a:homepage"):
        assert await keys_of(deployment, user) == before[user]
        assert await components.metadata.consumed_item_ids(user) == {20, 21}
        profile = await components.metadata.get_user(user)
        assert profile is not None
        assert not profile.deleted
    assert await components.metadata.erased_user_ids(USERS) == {"a"}
