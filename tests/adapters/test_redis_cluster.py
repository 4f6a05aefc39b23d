"""Redis deployments beside the standalone server: the settings of each mode, the client factory,
the translation of cluster errors, and on a real 3-master Redis Cluster what the key layout
promises (a user's write and its version count change together, batches of many users split by
slot, even after a node lost its scripts, the ingestion effects end to end); and a master found
through a real Sentinel."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool

from recsys.adapters.cache.redis import RedisRecommendationCache
from recsys.adapters.redis.connection import (
    RedisClient,
    create_client,
    slot_of,
    slot_tags,
    translate,
    user_tag,
)
from recsys.adapters.redis.counters import RedisItemCounters
from recsys.adapters.redis.features import RedisFeatureStore
from recsys.errors import ConfigurationError, DeadlineExceeded, Unavailable
from recsys.ports.cache import RESPONSES, CachedItem, CachedRecommendations
from recsys.ports.counters import Counter
from recsys.ports.features import UserEmbedding
from recsys.settings import RedisSettings, load_settings
from tests.support.redis_cluster import (
    MASTER_NAME,
    redis_client,
    remove_keys,
    running_sentinel,
)

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


# ------------------------------------------------------------------ settings and factory


def test_the_mode_is_standalone_unless_set() -> None:
    settings = load_settings().redis
    assert (settings.mode, settings.startup_nodes, settings.sentinels) == ("standalone", (), ())


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({"mode": "sentinel"}, "needs redis.sentinels and master_name"),
        ({"mode": "sentinel", "sentinels": ["127.0.0.1:26379"]}, "needs redis.sentinels"),
        ({"startup_nodes": ["127.0.0.1:7001"]}, "applies to redis.mode = 'cluster' only"),
        ({"mode": "cluster", "sentinels": ["127.0.0.1:26379"]}, "apply to redis.mode = 'sentinel'"),
        ({"master_name": "main"}, "apply to redis.mode = 'sentinel'"),
        ({"mode": "cluster", "url": "redis://127.0.0.1:7000/2"}, "database 0 only"),
        ({"mode": "cluster", "startup_nodes": ["127.0.0.1"]}, "should match pattern"),
        ({"mode": "replicated"}, "'standalone', 'cluster' or 'sentinel'"),
        ({"url": "127.0.0.1:6379"}, "redis://host:port/db"),
    ],
)
def test_inconsistent_redis_settings_are_refused(redis: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match="redis") as caught:
        load_settings(redis=redis)
    assert message in str(caught.value)


def test_the_environment_selects_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_REDIS__MODE", "cluster")
    monkeypatch.setenv("RECSYS_REDIS__URL", "redis://10.0.0.1:6379/0")
    monkeypatch.setenv("RECSYS_REDIS__STARTUP_NODES", '["10.0.0.2:6379", "10.0.0.3:6379"]')
    settings = load_settings().redis
    assert settings.mode == "cluster"
    assert settings.startup_nodes == ("10.0.0.2:6379", "10.0.0.3:6379")


async def test_the_factory_builds_the_client_of_each_mode() -> None:
    standalone = create_client(RedisSettings(max_connections=7))
    assert type(standalone) is aioredis.Redis
    cluster = create_client(
        RedisSettings(
            mode="cluster",
            url="redis://user:secret@10.0.0.1:7000/0",
            startup_nodes=("10.0.0.2:7001",),
            socket_timeout_ms=40,
            max_connections=7,
        )
    )
    assert isinstance(cluster, RedisCluster)
    assert {node.name for node in cluster.nodes_manager.startup_nodes.values()} == {
        "10.0.0.1:7000",
        "10.0.0.2:7001",
    }
    node = next(iter(cluster.nodes_manager.startup_nodes.values()))
    assert node.max_connections == 7
    assert node.connection_kwargs["socket_timeout"] == 0.04
    assert node.connection_kwargs["password"] == "secret"
    sentinel = create_client(
        RedisSettings(
            mode="sentinel",
            url="redis://127.0.0.1:6379/3",
            sentinels=("10.0.0.5:26379",),
            master_name="main",
        )
    )
    assert isinstance(sentinel, aioredis.Redis)
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "main"
    assert sentinel.connection_pool.connection_kwargs["db"] == 3
    for client in (standalone, cluster, sentinel):
        await client.aclose()


def test_every_slot_has_a_tag_of_its_own() -> None:
    tags = slot_tags()
    assert len(tags) == 16_384
    assert [slot_of(f"x:{tag}:y") for tag in tags] == list(range(16_384))


# ------------------------------------------------------------------ errors


async def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (redis_errors.ClusterDownError("The cluster is down"), "REDIS_ERROR"),
        (redis_errors.TryAgainError("Multiple keys request during rehashing"), "REDIS_ERROR"),
        (redis_errors.MovedError("3999 127.0.0.1:6381"), "REDIS_ERROR"),
        (redis_errors.SlotNotCoveredError("Slot 3999 is not covered"), "REDIS_ERROR"),
        (redis_errors.RedisClusterException("Redis Cluster cannot be connected"), "REDIS_ERROR"),
        (MasterNotFoundError("No master found for 'main'"), "REDIS_DOWN"),
        (redis_errors.ResponseError("CROSSSLOT Keys don't hash to the same slot"), None),
        (redis_errors.CrossSlotTransactionError("keys in several slots"), None),
    ],
)
async def test_cluster_and_sentinel_errors_are_unavailable(
    error: Exception, reason: str | None
) -> None:
    with pytest.raises(Unavailable) as caught:
        await translate(lambda: _raise(error), "a test call")
    assert caught.value.reason == (reason or "REDIS_COMMAND_FAILED")


async def test_a_cluster_nobody_answers_for_is_unavailable() -> None:
    from recsys.deploy.ports import free_port

    settings = RedisSettings(mode="cluster", url=f"redis://127.0.0.1:{free_port()}/0")
    store = RedisFeatureStore(create_client(settings), namespace="down")
    with pytest.raises((Unavailable, DeadlineExceeded)) as caught:
        await store.get_user_features("u1")
    assert not isinstance(caught.value, DeadlineExceeded)
    await store.close()


# ------------------------------------------------------------------ on a real cluster


@pytest.fixture
async def cluster_client(request: pytest.FixtureRequest) -> AsyncIterator[RedisClient]:
    client = redis_client(request, "redis_cluster")
    yield client
    await client.aclose()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def embedding(version: str, value: float = 1.0) -> UserEmbedding:
    return UserEmbedding(np.full(4, value, np.float32), version, NOW)


@pytest.mark.integration
async def test_a_users_embedding_and_its_version_count_change_together(
    request: pytest.FixtureRequest, cluster_client: RedisClient, namespace: str
) -> None:
    """Concurrent rewrites of the same users with alternating versions: each write moves the
    user's count in the same script as the write (one slot), so the counts always equal the
    versions the users hold. Two steps (write, then count) would drift under this race."""
    store = RedisFeatureStore(redis_client(request, "redis_cluster"), namespace=namespace)
    users = [f"user-{index}" for index in range(12)]
    try:

        async def rewrite(user_id: str, round_: int) -> None:
            await store.put_user_embedding(user_id, embedding(f"v{round_ % 3}", round_))

        await asyncio.gather(
            *(rewrite(user_id, round_) for round_ in range(8) for user_id in users)
        )
        held: dict[str, int] = {}
        for user_id in users:
            stored = await store.get_user_embedding(user_id)
            assert stored is not None
            held[stored.embedding_version] = held.get(stored.embedding_version, 0) + 1
        assert await store.embedding_version_counts() == dict(sorted(held.items()))
        # The counts are spread over the users' slots, each beside its users.
        written = [key async for key in cluster_client.scan_iter(match=f"{namespace}:emb*")]
        assert len(written) == len({slot_of(user_tag(user_id)) for user_id in users})
        for user_id in users[:4]:
            await store.delete_user(user_id)
        assert sum((await store.embedding_version_counts()).values()) == len(users) - 4
    finally:
        await remove_keys(cluster_client, namespace)
        await store.close()


@pytest.mark.integration
async def test_a_batch_of_many_users_is_recorded_per_slot_after_a_script_flush(
    request: pytest.FixtureRequest, cluster_client: RedisClient, namespace: str
) -> None:
    from recsys.domain.interactions import Interaction, InteractionKind

    store = RedisFeatureStore(
        redis_client(request, "redis_cluster"), namespace=namespace, clock=lambda: NOW
    )
    users = [f"user-{index}" for index in range(40)]
    events = [
        Interaction(f"{user_id}-{item}", user_id, item, InteractionKind.VIEW, 0.0, NOW)
        for user_id in users
        for item in (1, 2)
    ]
    try:
        assert len({slot_of(store.keys.user_recent(user_id)) for user_id in users}) > 1
        await store.record_events(events)
        # Every node forgets its scripts (a restart, a failover to a fresh replica).
        assert isinstance(cluster_client, RedisCluster)
        for node in cluster_client.get_primaries():
            await cluster_client.execute_command("SCRIPT FLUSH", target_nodes=node)
        await store.record_events(
            [
                Interaction(f"{user_id}-3", user_id, 3, InteractionKind.VIEW, 0.0, NOW)
                for user_id in users
            ]
        )
        for user_id in users:
            assert (await store.get_user_features(user_id)).recent_item_ids == (1, 2, 3)
    finally:
        await remove_keys(cluster_client, namespace)
        await store.close()


@pytest.mark.integration
async def test_interaction_effects_apply_on_the_cluster(
    request: pytest.FixtureRequest, cluster_client: RedisClient, namespace: str, tmp_path: Path
) -> None:
    """The consumer's effects through the ports: metadata in SQLite, and features, counters and
    the cache on the cluster; then a deletion erases the user's keys there."""
    from recsys.adapters.sql.metadata import SqlMetadataRepository
    from recsys.domain.ingestion import InteractionEffects
    from recsys.domain.interactions import Interaction, InteractionKind
    from recsys.metadata.database import create_engine
    from recsys.metadata.migrate import upgrade
    from recsys.settings import DatabaseSettings

    database = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
    upgrade(database)
    metadata = SqlMetadataRepository(create_engine(database))
    features = RedisFeatureStore(
        redis_client(request, "redis_cluster"), namespace=namespace, clock=lambda: NOW
    )
    counters = RedisItemCounters(
        redis_client(request, "redis_cluster"), namespace=namespace, clock=lambda: NOW
    )
    cache = RedisRecommendationCache(
        redis_client(request, "redis_cluster"), namespace=namespace, surfaces=("homepage",)
    )
    effects = InteractionEffects(
        metadata=metadata, features=features, counters=counters, cache=cache, clock=lambda: NOW
    )
    users = [f"user-{index}" for index in range(10)]
    answer = CachedRecommendations(items=(CachedItem(9, 1.0),), model_version="m")
    try:
        for user_id in users:
            await cache.put(RESPONSES, user_id, "homepage", answer, ttl_seconds=60)
        events = [
            Interaction(f"{user_id}-{item}", user_id, item, InteractionKind.CLICK, 0.0, NOW)
            for user_id in users
            for item in (4, 5)
        ]
        applied = await effects.apply(events)
        assert applied.new == len(events)
        assert (await effects.apply(events)).new == 0  # redelivered: counted once
        for user_id in users:
            assert (await features.get_user_features(user_id)).recent_item_ids == (4, 5)
            assert await cache.get(RESPONSES, user_id, "homepage") is None
        assert await counters.top(Counter.POPULARITY, 5) == [4, 5]
        values = await counters.values(Counter.POPULARITY, [4, 5])
        assert values[4] == pytest.approx(values[5])
        assert values[4] > 0

        await effects.erase(users[0])
        tag = user_tag(users[0]).encode()
        assert not [
            key async for key in cluster_client.scan_iter(match=f"{namespace}:*") if tag in key
        ]
        assert (await features.get_user_features(users[1])).recent_item_ids == (4, 5)
    finally:
        await remove_keys(cluster_client, namespace)
        for adapter in (features, counters, cache):
            await adapter.close()
        await metadata.close()


# ------------------------------------------------------------------ through a sentinel


@pytest.mark.integration
async def test_the_adapters_find_the_master_through_a_sentinel(tmp_path: Path) -> None:
    with running_sentinel(tmp_path / "sentinel") as (master_url, sentinel):
        settings = RedisSettings(
            mode="sentinel",
            url="redis://127.0.0.1:1/0",  # the host is not used: the sentinel names the master
            sentinels=(sentinel,),
            master_name=MASTER_NAME,
            socket_timeout_ms=5000,
            connect_timeout_ms=2000,
        )
        store = RedisFeatureStore(create_client(settings), namespace="sentinel")
        direct = aioredis.Redis.from_url(master_url)
        try:
            await store.put_user_embedding("u1", embedding("v1"))
            assert await store.embedding_version_counts() == {"v1": 1}
            assert await direct.exists(store.keys.user_features("u1")) == 1
        finally:
            await store.close()
            await direct.aclose()
