"""A small catalogue and users, served by a real embedded deployment, for Recommend tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from recsys import services
from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.grpc_server.app import GrpcApplication
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys.ports.features import ItemFeatures, UserEmbedding
from recsys.ports.metadata import ItemMetadata, UserProfile
from tests.conftest import make_settings

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
