"""Embedding migration (seed Simulation 6): `recsys migrate-embeddings` moves users from flagged
popularity answers to personalised ones as it backfills them, resumes where it stopped, keeps
its rate, and the users per embedding version are exported as a metric."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.cli import app
from recsys.data.features_file import FeatureSnapshot, save_features
from recsys.errors import Unavailable
from recsys.migration import TokenBucket, migrate_user_embeddings
from recsys.observability.metrics import UserEmbeddingVersionsCollector
from recsys.ports.features import UserEmbedding
from recsys.ports.metadata import UserProfile
from recsys.release import ReleaseManifest
from recsys.settings import MigrationSettings
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.services import require_redis
from tests.support.world import DIMENSION, SharedStores, catalogue, world_on_shared_stores

runner = CliRunner()
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
# The world's index is built from embeddings "e1"; its users start on "e0".
OLD, NEW = "e0", "e1"
USERS = [f"m{number:02d}" for number in range(20)]
ERASED = "gone"


def snapshot_of(user_ids: Sequence[str], version: str = NEW) -> FeatureSnapshot:
    vectors, items = catalogue()
    users = len(user_ids)
    return FeatureSnapshot(
        embedding_version=version,
        generated_at=NOW,
        user_ids=list(user_ids),
        # Item vectors, so that retrieval finds neighbours for every user.
        user_vectors=vectors[20 : 20 + users].copy(),
        preference_categories=["Drama"],
        user_preferences=np.zeros((users, 1), np.float32),
        item_ids=np.arange(len(items), dtype=np.int64),
        item_categories=[item.category for item in items],
        item_popularity=np.array([item.popularity for item in items], np.float32),
        item_freshness=np.full(len(items), 0.5, np.float32),
        item_vectors=vectors,
        default_user_vector=vectors.mean(axis=0),
    )


async def sample(stores: SharedStores, version: str) -> float | None:
    registry = stores.app.components.registry
    return registry.get_sample_value("recsys_user_embeddings", {"embedding_version": version})


async def wait_for_counts(stores: SharedStores, expected: dict[str, float]) -> None:
    """The background refresh (every 0.1 s here) catches up with the store."""
    deadline = time.monotonic() + 10
    seen: dict[str, float | None] = {}
    while time.monotonic() < deadline:
        seen = {version: await sample(stores, version) for version in expected}
        if seen == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"recsys_user_embeddings is {seen}, expected {expected}")


async def flagged(client: AsyncRecsysClient, user_ids: Sequence[str]) -> dict[str, bool]:
    """Whether each user's answer came from popularity candidates; every call must succeed."""
    answers = {}
    for user_id in user_ids:
        response = await client.recommend(user_id, surface="homepage", limit=10)
        assert len(response.items) == 10, user_id
        assert not response.cold_start, user_id
        answers[user_id] = response.degradation.popularity_candidates
    return answers


def migrate(config: Path, snapshot: Path, *arguments: str) -> str:
    result = runner.invoke(app, ["migrate-embeddings", str(snapshot), "--config", str(config),
                                 *arguments])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.integration
async def test_migration_moves_users_from_flagged_popularity_to_personalised(
    tmp_path: Path,
) -> None:
    async with world_on_shared_stores(
        tmp_path,
        redis={"socket_timeout_ms": 2000},
        features={"store": "redis"},
        recommend={"feature_timeout_ms": 2000},
        migration={"metric_interval_seconds": 0.1},
    ) as stores:
        components = stores.app.components
        await components.metadata.upsert_users([UserProfile(user, 30, "US") for user in USERS])
        # As in the seed, the old model's embeddings do not even have the index's dimension.
        old_vectors = np.random.default_rng(3).normal(size=(len(USERS), DIMENSION * 2))
        for user, vector in zip(USERS, old_vectors.astype(np.float32), strict=True):
            await components.feature_store.put_user_embedding(user, UserEmbedding(vector, OLD, NOW))
        await components.metadata.erase_user(ERASED)
        # Erased users are left out wherever they stand in the snapshot.
        path = tmp_path / "features-e1.npz"
        save_features(path, snapshot_of([*USERS[:10], ERASED, *USERS[10:]]))
        config = tmp_path / "recsys.toml"
        config.write_text(
            f"""
[features]
store = "redis"
[redis]
url = "{require_redis()}"
namespace = "{stores.namespace}"
[database]
url = "{stores.database.url}"
schema_name = "{stores.database.schema_name}"
[migration]
progress_interval_seconds = 0.001
"""
        )
        # The world holds alice and kid at e1 and "stale" at e0.
        await wait_for_counts(stores, {NEW: 2, OLD: 21})
        client = AsyncRecsysClient(
            ClientOptions(target=stores.app.address, timeout_seconds=10, retry=None)
        )
        async with client:
            assert await flagged(client, USERS) == dict.fromkeys(USERS, True)

            first = await asyncio.to_thread(migrate, config, path, "--limit", "10")
            assert "migrated 10 users to embedding version e1" in first
            assert "skipped 0 already migrated and 1 erased" in first
            assert "stopped at --limit: 10 users not looked at yet" in first
            assert "11/21 users (52%): 10 migrated" in first  # a progress line
            assert "users per embedding version in the feature store: e0 11, e1 12" in first
            assert await flagged(client, USERS) == {
                user: row >= 10 for row, user in enumerate(USERS)
            }
            await wait_for_counts(stores, {NEW: 12, OLD: 11})

            second = await asyncio.to_thread(migrate, config, path)
            assert "migrated 10 users to embedding version e1" in second
            assert "skipped 10 already migrated and 1 erased" in second
            assert "not looked at" not in second
            assert await flagged(client, USERS) == dict.fromkeys(USERS, False)
            await wait_for_counts(stores, {NEW: 22, OLD: 1})

        store = components.feature_store
        assert await store.get_user_embedding(ERASED) is None
        default = await store.get_default_user_embedding()
        assert default is not None
        assert default.embedding_version == NEW


async def test_the_rate_is_kept() -> None:
    store = InMemoryFeatureStore()
    snapshot = snapshot_of([f"u{number}" for number in range(200)])
    settings = MigrationSettings(rate_per_second=100, batch_size=50)
    started = time.monotonic()
    progress = await migrate_user_embeddings(snapshot, store, metadata=None, settings=settings)
    elapsed = time.monotonic() - started
    assert (progress.migrated, progress.skipped, progress.looked_at) == (200, 0, 200)
    assert elapsed >= 1.9  # 200 users at 100 per second, from an empty bucket
    assert await store.embedding_version_counts() == {NEW: 200}


async def test_a_rerun_skips_users_already_migrated_and_rewrites_old_ones() -> None:
    store = InMemoryFeatureStore()
    users = [f"u{number}" for number in range(30)]
    snapshot = snapshot_of(users)
    settings = MigrationSettings(rate_per_second=10_000, batch_size=7)
    first = await migrate_user_embeddings(
        snapshot, store, metadata=None, settings=settings, limit=12
    )
    assert (first.migrated, first.looked_at, first.stopped_at_limit) == (12, 12, True)
    # A user put back on the old version (a late old-version load) is written again.
    await store.put_user_embedding("u3", UserEmbedding(np.zeros(DIMENSION, np.float32), OLD, NOW))
    second = await migrate_user_embeddings(snapshot, store, metadata=None, settings=settings)
    assert (second.migrated, second.skipped, second.looked_at) == (19, 11, 30)
    assert second.finished
    stored = await store.get_user_embedding("u3")
    assert stored is not None
    assert stored.embedding_version == NEW
    np.testing.assert_array_equal(stored.vector, snapshot.user_vectors[3])


async def test_token_bucket_starts_empty_and_refills_at_its_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10, 5, clock=lambda: now[0], sleep=sleep)
    await bucket.take(5)
    await bucket.take(5)
    assert now[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cannot take 6 at once"):
        await bucket.take(6)


async def test_the_metric_exports_the_last_count_when_the_store_fails() -> None:
    calls = 0
    counted_again = asyncio.Event()

    async def counts() -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"e0": 3, "e1": 1}
        if calls == 2:
            return {"e1": 4}  # the store drops a version's count at 0
        if calls >= 3:
            counted_again.set()
        raise Unavailable("down")

    collector = UserEmbeddingVersionsCollector(counts, interval_seconds=0.01)
    assert [family.samples for family in collector.collect()] == [[]]
    task = asyncio.create_task(collector.run())
    try:
        # A failed count does not stop the refresh.
        await asyncio.wait_for(counted_again.wait(), timeout=5)
    finally:
        task.cancel()
    (family,) = collector.collect()
    assert family.name == "recsys_user_embeddings"
    assert {sample.labels["embedding_version"]: sample.value for sample in family.samples} == {
        "e0": 0,
        "e1": 4,
    }


def write_release(directory: Path, embedding_version: str) -> None:
    manifest = ReleaseManifest(
        release_id="r1",
        model_version="ranker:1",
        embedding_version=embedding_version,
        index_version="v1",
        num_shards=1,
        created_at=NOW,
    )
    (directory / "releases").mkdir(parents=True)
    (directory / "releases" / "r1.json").write_text(manifest.model_dump_json())
    (directory / "CURRENT").write_text("r1\n")


def test_cli_refuses_a_snapshot_of_another_version_than_the_release(tmp_path: Path) -> None:
    write_release(tmp_path / "releases", "e2")
    path = tmp_path / "features.npz"
    save_features(path, snapshot_of(["u0"]))
    environment = {
        "RECSYS_RELEASE__DIRECTORY": str(tmp_path / "releases"),
        "RECSYS_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}",
    }
    refused = runner.invoke(app, ["migrate-embeddings", str(path)], env=environment)
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "recsys: the snapshot holds embedding version e1, the current release r1 serves e2: "
        "publish the release of e1 first, or pass --force"
    )
    # Past the version check, the in-memory store (of this process only) is refused next.
    forced = runner.invoke(app, ["migrate-embeddings", str(path), "--force"], env=environment)
    assert forced.exit_code == 1
    assert "migrating anyway (--force)" in forced.stderr
    assert "the in-memory feature store keeps nothing across processes" in forced.stderr


def test_cli_refuses_a_missing_or_broken_file(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["migrate-embeddings", str(tmp_path / "nowhere.npz")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a snapshot")
    refused = runner.invoke(app, ["migrate-embeddings", str(broken)])
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"recsys: cannot read the feature snapshot {broken}")
