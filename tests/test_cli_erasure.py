"""Erasure survives the documented reload commands: after a user is erased, `recsys data load`,
`recsys data features FILE` and `recsys train` leave that user out (the tombstone in the SQL
metadata store), on a tmp_path SQLite file and a Redis namespace of the test's own."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from recsys.adapters.redis.connection import user_tag
from recsys.cli import app
from recsys.data.features_file import FeatureSnapshot, load_features, save_features
from recsys.settings import RecsysSettings, load_settings
from tests.support.services import require_redis

pytestmark = pytest.mark.integration

runner = CliRunner()
SYNTHETIC = ["--items", "200", "--users", "40", "--interactions-per-user", "5", "--seed", "3"]
ERASED = "user1"
KEPT = ("user0", "user2")


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecsysSettings]:
    """Redis feature store, cache and limiter under a fresh namespace; SQLite metadata."""
    url = require_redis()
    namespace = f"test-cli-{uuid.uuid4().hex[:10]}"
    environment = {
        "RECSYS_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}",
        "RECSYS_FEATURES__STORE": "redis",
        "RECSYS_RECOMMEND__CACHE": "redis",
        "RECSYS_RATE_LIMIT__LIMITER": "redis",
        "RECSYS_REDIS__URL": url,
        "RECSYS_REDIS__NAMESPACE": namespace,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    try:
        yield load_settings()
    finally:
        asyncio.run(_delete_namespace(url, namespace))


async def _delete_namespace(url: str, namespace: str) -> None:
    client = aioredis.Redis.from_url(url)
    keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def write_snapshot(path: Path, user_ids: list[str]) -> Path:
    users = len(user_ids)
    save_features(
        path,
        FeatureSnapshot(
            embedding_version="als-1",
            generated_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            user_ids=user_ids,
            user_vectors=np.ones((users, 4), np.float32),
            preference_categories=["Drama"],
            user_preferences=np.ones((users, 1), np.float32),
            item_ids=np.array([0, 1], np.int64),
            item_categories=["Drama", "Drama"],
            item_popularity=np.array([0.5, 0.5], np.float32),
            item_freshness=np.array([0.5, 0.5], np.float32),
            item_vectors=np.ones((2, 4), np.float32),
            default_user_vector=np.ones(4, np.float32),
        ),
    )
    return path


async def erase(settings: RecsysSettings, user_id: str) -> int:
    """What DeleteUserData runs, on the configured adapters."""
    from recsys.adapters.events.in_memory import InMemoryEventSink
    from recsys.domain.erasure import UserDataEraser
    from recsys.registry import create_adapter

    features = create_adapter("feature_store", "redis", settings)
    cache = create_adapter("recommendation_cache", "redis", settings)
    limiter = create_adapter("rate_limiter", "redis", settings)
    metadata = create_adapter("metadata", "sql", settings)
    try:
        await limiter.hit(user_id)
        erased = await UserDataEraser(
            features=features,
            cache=cache,
            metadata=metadata,
            events=InMemoryEventSink(capacity=10),
            limiter=limiter,
        ).erase(user_id)
        return erased.deleted_keys
    finally:
        for adapter in (features, cache, limiter, metadata):
            await adapter.close()


async def user_state(settings: RecsysSettings, user_id: str) -> dict[str, object]:
    """What the stores hold of a user: Redis keys, features, SQL rows."""
    from recsys.registry import create_adapter

    client = aioredis.Redis.from_url(settings.redis.url)
    features = create_adapter("feature_store", "redis", settings)
    metadata = create_adapter("metadata", "sql", settings)
    try:
        tag = user_tag(user_id)
        keys = [
            key async for key in client.scan_iter(match=f"{settings.redis.namespace}:*")
            if tag.encode() in key
        ]  # fmt: skip
        profile = await metadata.get_user(user_id)
        return {
            "keys": len(keys),
            "embedding": (await features.get_user_features(user_id)).embedding is not None,
            "profile_data": profile is not None and not profile.deleted,
            "interactions": len(await metadata.consumed_item_ids(user_id)),
        }
    finally:
        await client.aclose()
        await features.close()
        await metadata.close()


def test_an_erased_user_stays_erased_through_the_reload_commands(
    deployment: RecsysSettings, tmp_path: Path
) -> None:
    snapshot = write_snapshot(tmp_path / "features.npz", ["user0", "user1", "user2"])
    loaded = runner.invoke(app, ["data", "load", *SYNTHETIC, "--metadata-only"])
    assert loaded.exit_code == 0, loaded.output
    assert "skipped 0 erased users" in loaded.output
    features = runner.invoke(app, ["data", "features", str(snapshot)])
    assert features.exit_code == 0, features.output
    assert "loaded 3 users and 2 items" in features.output
    before = asyncio.run(user_state(deployment, ERASED))
    assert before["embedding"]
    assert before["profile_data"]
    assert before["interactions"]

    assert asyncio.run(erase(deployment, ERASED)) == 2  # the features hash, the counter
    erased_state = {"keys": 0, "embedding": False, "profile_data": False, "interactions": 0}
    assert asyncio.run(user_state(deployment, ERASED)) == erased_state

    features = runner.invoke(app, ["data", "features", str(snapshot)])
    assert features.exit_code == 0, features.output
    assert "loaded 2 users and 2 items" in features.output
    assert "skipped 1 erased users" in features.output
    reloaded = runner.invoke(app, ["data", "load", *SYNTHETIC, "--metadata-only"])
    assert reloaded.exit_code == 0, reloaded.output
    assert "loaded 200 items, 39 users and 195 interactions" in reloaded.output
    assert "skipped 1 erased users (1 profiles, 5 interactions)" in reloaded.output
    assert asyncio.run(user_state(deployment, ERASED)) == erased_state
    for user in KEPT:
        kept = asyncio.run(user_state(deployment, user))
        assert kept["embedding"]
        assert kept["profile_data"]
        assert kept["interactions"]

    # Training on the same catalogue leaves the erased user out of the model and the snapshot,
    # and --load-features writes no features for them.
    trained = runner.invoke(
        app,
        ["train", *SYNTHETIC, "--output", str(tmp_path / "training"),
         "--model-repository", str(tmp_path / "models"), "--factors", "8",
         "--iterations", "2", "--load-features"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "training data: skipped 1 erased users (1 profiles, 5 interactions)" in trained.output
    assert "skipped 0 erased users" in trained.output  # nothing left for the loader to skip
    written = load_features(tmp_path / "training" / "features.npz")
    assert ERASED not in written.user_ids
    assert set(KEPT) <= set(written.user_ids)
    assert asyncio.run(user_state(deployment, ERASED)) == erased_state


def test_without_a_metadata_file_nothing_is_left_out_and_no_file_is_created(
    deployment: RecsysSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "none" / "meta.db"
    monkeypatch.setenv("RECSYS_DATABASE__URL", f"sqlite+aiosqlite:///{missing}")
    snapshot = write_snapshot(tmp_path / "features.npz", ["user0", "user1"])
    result = runner.invoke(app, ["data", "features", str(snapshot)])
    assert result.exit_code == 0, result.output
    assert f"no metadata database at {missing}: no erased users to leave out" in result.output
    assert "loaded 2 users and 2 items" in result.output
    assert not missing.parent.exists()


def test_an_unreachable_metadata_server_stops_the_feature_load(
    deployment: RecsysSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tombstones cannot be read: loading anyway could bring erased users back."""
    monkeypatch.setenv("RECSYS_DATABASE__URL", "postgresql+psycopg://postgres@127.0.0.1:1/test")
    snapshot = write_snapshot(tmp_path / "features.npz", ["user0"])
    result = runner.invoke(app, ["data", "features", str(snapshot)])
    assert result.exit_code == 1
    assert result.stderr.startswith("recsys: ")
    assert asyncio.run(user_state_keys(deployment)) == 0


async def user_state_keys(settings: RecsysSettings) -> int:
    client = aioredis.Redis.from_url(settings.redis.url)
    keys = [key async for key in client.scan_iter(match=f"{settings.redis.namespace}:*")]
    await client.aclose()
    return len(keys)
