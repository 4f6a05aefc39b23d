"""A small catalogue and users, served by a real embedded deployment, for Recommend tests."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from sqlalchemy import text

from recsys import services
from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.grpc_server.app import GrpcApplication
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys.metadata.database import create_migration_engine
from recsys.ports.features import ItemFeatures, UserEmbedding
from recsys.ports.metadata import ItemMetadata, UserProfile
from recsys.settings import DatabaseSettings
from tests.conftest import make_settings
from tests.support.services import require_postgres, require_redis
from tests.support.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
DIMENSION = 8
ITEMS = 300
NUM_SHARDS = 2
CATEGORIES = ["Action", "Comedy", "Drama", "Horror", "Kids"]


def catalogue() -> tuple[np.ndarray, list[ItemMetadata]]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(ITEMS, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [
        ItemMetadata(
            item_id=item,
            category=CATEGORIES[item % len(CATEGORIES)],
            adult=item % 7 == 0,
            available_regions=("DE",) if item % 11 == 0 else (),
            popularity=float(rng.random()),
        )
        for item in range(ITEMS)
    ]
    return vectors, items


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


async def build_world(tmp_path: Path, **overrides: Any) -> GrpcApplication:
    vectors, items = catalogue()
    snapshots = tmp_path / "snapshots"
    build_shard_snapshots(
        ItemEmbeddings(np.arange(ITEMS, dtype=np.int64), vectors, "e1"),
        IndexSpec(dimension=DIMENSION, index_type=IndexType.FLAT),
        num_shards=NUM_SHARDS, index_version="v1",
        snapshots=SnapshotManager(LocalSnapshotStore(snapshots)),
    )  # fmt: skip
    base: dict[str, Any] = {
        "index": {"num_shards": NUM_SHARDS, "snapshot_dir": str(snapshots),
                  "spec": {"dimension": DIMENSION}, "snapshot_poll_seconds": 0},
        "rank": {"model_repository": str(ROOT / "triton_models"), "reload_poll_seconds": 0},
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"},
        "rate_limit": {"requests_per_window": 20},
        # Budgets no healthy read runs into on a loaded 2-core machine (tests that are about
        # a budget set their own).
        "recommend": {"categories": CATEGORIES, "feature_timeout_ms": 200,
                      "cache_timeout_ms": 200, "metadata_timeout_ms": 500},
        "logging": {"access_log": False},
    }  # fmt: skip
    settings = make_settings(tmp_path, **merge(base, overrides))
    if "postgresql" in settings.database.url:
        from recsys.metadata.migrate import upgrade

        upgrade(settings.database)
    app = await services.build_application(settings, ["embedded"])
    await app.start()
    features = app.components.feature_store
    metadata = app.components.metadata
    now = dt.datetime.now(dt.UTC)
    await features.put_item_features(
        {
            item.item_id: ItemFeatures(item.category, item.popularity, 0.5, vectors[item.item_id])
            for item in items
        }
    )
    await features.put_default_user_embedding(UserEmbedding(vectors.mean(axis=0), "e1", now))
    await app.components.recommend_pipeline.refresh_default_embedding()
    await metadata.upsert_items(items)
    await metadata.upsert_users(
        [
            UserProfile("alice", 30, "US", blocked_categories=("Horror",)),
            UserProfile("kid", 12, "US"),
            UserProfile("bob", 25, "US", onboarding_categories=("Comedy",), liked_item_ids=(3,)),
            UserProfile("stale", 40, "US"),
        ]
    )
    await features.put_user_embedding("alice", UserEmbedding(vectors[1], "e1", now))
    await features.put_user_embedding("kid", UserEmbedding(vectors[2], "e1", now))
    await features.put_user_embedding("stale", UserEmbedding(vectors[1], "e0", now))
    await metadata.record_interactions(
        [Interaction(f"a{i}", "alice", i, InteractionKind.CLICK, 1.0, now) for i in (10, 11, 12)]
    )
    return app


@dataclass
class SharedStores:
    """A world on the shared Redis (through a TCP proxy that can cut or slow it, when asked
    for) and a PostgreSQL schema of its own, both cleaned up afterwards."""

    app: GrpcApplication
    namespace: str
    database: DatabaseSettings
    proxy: TcpProxy | None


@asynccontextmanager
async def world_on_shared_stores(
    tmp_path: Path,
    *,
    through_proxy: bool = False,
    redis: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[SharedStores]:
    redis_url = require_redis()
    postgres = require_postgres()
    proxy = TcpProxy("127.0.0.1", 6379) if through_proxy else None
    url = redis_url if proxy is None else f"redis://127.0.0.1:{await proxy.start()}/0"
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    database = DatabaseSettings(url=postgres, schema_name=f"test_{uuid.uuid4().hex[:12]}")
    try:
        app = await build_world(
            tmp_path,
            redis={"url": url, "namespace": namespace, **(redis or {})},
            database={"url": postgres, "schema_name": database.schema_name},
            **overrides,
        )
        try:
            yield SharedStores(app, namespace, database, proxy)
        finally:
            await app.shutdown()
    finally:
        if proxy is not None:
            await proxy.stop()
        direct = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in direct.scan_iter(match=f"{namespace}:*")]
        if keys:
            await direct.delete(*keys)
        await direct.aclose()
        engine = create_migration_engine(database.model_copy(update={"schema_name": ""}))
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{database.schema_name}" CASCADE'))
        engine.dispose()


async def start_shard_of_world(tmp_path: Path, *, access_log: bool) -> GrpcApplication:
    """`recsys serve shard` for shard 0 of the snapshots `build_world(tmp_path)` built."""
    settings = make_settings(
        tmp_path,
        index={
            "num_shards": NUM_SHARDS,
            "shard_id": 0,
            "snapshot_dir": str(tmp_path / "snapshots"),
            "spec": {"dimension": DIMENSION},
            "snapshot_poll_seconds": 0,
        },
        logging={"access_log": access_log},
    )
    app = await services.build_application(settings, ["shard"])
    await app.start()
    return app
