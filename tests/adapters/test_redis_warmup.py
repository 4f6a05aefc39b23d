"""The feature store's warm-up on a Redis of the test's own: a Redis killed and restarted empty is
restored from the snapshot within a few checks (erased users left out), a frozen one (SIGSTOP)
neither stops nor floods the loop, warm-ups racing load once, a lock whose holder died
expires while a long load keeps its own, a Redis restarted during a load is not marked
loaded, and `recsys data features` writes the marker the warm-up honours."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from recsys.adapters.redis.connection import create_client
from recsys.adapters.redis.features import RedisFeatureStore
from recsys.adapters.redis.warmup import RedisLoadMarker, bulk_feature_store
from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.cli import app
from recsys.composition import Components
from recsys.data.features_file import FeatureSnapshot, save_features
from recsys.data.warmup import CheckOutcome, FeatureRestoreMetrics, FeatureWarmup
from recsys.metadata.database import create_engine
from recsys.metadata.migrate import upgrade
from recsys.settings import DatabaseSettings, RedisSettings, load_settings
from tests.conftest import make_settings
from tests.support.own_redis import OwnRedis, own_redis

pytestmark = pytest.mark.integration

NAMESPACE = "warmup"
CHECK_SECONDS = 0.2
USERS = 60
ITEMS = 300
DIMENSION = 8


def feature_snapshot(users: int = USERS, items: int = ITEMS) -> FeatureSnapshot:
    rng = np.random.default_rng(3)
    categories = ["Action", "Comedy", "Drama"]
    user_vectors = rng.normal(size=(users, DIMENSION)).astype(np.float32)
    return FeatureSnapshot(
        embedding_version="als-7",
        generated_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        user_ids=[f"u{user}" for user in range(users)],
        user_vectors=user_vectors,
        preference_categories=categories,
        user_preferences=rng.random((users, len(categories))).astype(np.float32),
        item_ids=np.arange(items, dtype=np.int64),
        item_categories=[categories[item % len(categories)] for item in range(items)],
        item_popularity=rng.random(items).astype(np.float32),
        item_freshness=rng.random(items).astype(np.float32),
        item_vectors=rng.normal(size=(items, DIMENSION)).astype(np.float32),
        default_user_vector=user_vectors.mean(axis=0),
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def snapshot_path(tmp_path: Path) -> Path:
    path = tmp_path / "features.npz"
    save_features(path, feature_snapshot())
    return path


@contextlib.asynccontextmanager
async def no_tombstones() -> AsyncIterator[None]:
    yield None


def marker_on(server: OwnRedis, *, timeout_ms: int = 2000) -> RedisLoadMarker:
    settings = RedisSettings(
        url=server.url, socket_timeout_ms=timeout_ms, connect_timeout_ms=timeout_ms
    )
    return RedisLoadMarker(create_client(settings), namespace=NAMESPACE)


def warmup_on(
    marker: RedisLoadMarker,
    path: Path,
    *,
    metrics: FeatureRestoreMetrics | None = None,
    tombstones: Callable[[], Any] = no_tombstones,
    lock_seconds: float = 30.0,
) -> FeatureWarmup:
    settings = load_settings(redis={"namespace": NAMESPACE})
    return FeatureWarmup(
        path,
        marker=marker,
        store=bulk_feature_store(settings, marker),
        tombstones=tombstones,
        check_seconds=CHECK_SECONDS,
        metrics=metrics,
        lock_seconds=lock_seconds,
    )


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float) -> float:
    """Seconds until `condition()` holds; fails after `within`."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def holds_the_snapshot(store: RedisFeatureStore) -> bool:
    """The user, item and default features of the snapshot are readable (the serving store,
    50 ms timeouts: a read that fails counts as not yet)."""
    try:
        user = await store.get_user_embedding("u0")
        items = await store.get_item_features([0, ITEMS - 1])
        default = await store.get_default_user_embedding()
    except Exception:
        return False
    return user is not None and bool(items.found.all()) and default is not None


def restores(registry: Any, outcome: str) -> float:
    value = registry.get_sample_value("recsys_feature_restores_total", {"outcome": outcome})
    return float(value or 0.0)


async def test_a_redis_restarted_empty_is_restored_within_a_few_checks(
    tmp_path: Path, redis_server: OwnRedis, snapshot_path: Path
) -> None:
    database = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
    upgrade(database)
    metadata = SqlMetadataRepository(create_engine(database))
    await metadata.erase_user("u1")  # a tombstone: never restored
    await metadata.close()
    settings = make_settings(
        tmp_path,
        redis={"url": redis_server.url, "namespace": NAMESPACE},
        features={"store": "redis", "restore_path": str(snapshot_path),
                  "restore_check_seconds": CHECK_SECONDS},
        database={"url": database.url},
    )  # fmt: skip
    components = Components(settings)
    async with components.resources:
        store = components.feature_store
        assert isinstance(store, RedisFeatureStore)
        for hook in components.startup_hooks:
            await hook()
        # A fresh Redis: the first check restores it, no hand step.
        await eventually(lambda: holds_the_snapshot(store), within=15)
        assert await store.get_user_embedding("u1") is None
        registry = components.registry
        assert restores(registry, "restored") == 1
        assert registry.get_sample_value("recsys_feature_snapshot_loaded") == 1

        redis_server.kill()
        await asyncio.sleep(5 * CHECK_SECONDS)  # checks fail meanwhile, the loop goes on
        redis_server.start()  # empty
        seconds = await eventually(lambda: holds_the_snapshot(store), within=15)
        # A check interval, the load of 300 items and 60 users, and a loaded machine's slack.
        assert seconds < 10 * CHECK_SECONDS + 3.0, seconds
        assert await store.get_user_embedding("u1") is None
        assert restores(registry, "restored") == 2
        last = registry.get_sample_value("recsys_feature_restore_last_timestamp_seconds")
        assert last is not None
        assert time.time() - last < 15
        assert registry.get_sample_value("recsys_feature_restore_last_duration_seconds")


async def test_a_frozen_redis_neither_stops_nor_floods_the_loop(
    redis_server: OwnRedis, snapshot_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = marker_on(redis_server, timeout_ms=200)
    warmup = warmup_on(marker, snapshot_path)
    outcomes: list[CheckOutcome] = []
    check = warmup.check

    async def recorded() -> CheckOutcome:
        outcome = await check()
        outcomes.append(outcome)
        return outcome

    warmup.check = recorded  # type: ignore[method-assign]
    direct = aioredis.Redis.from_url(redis_server.url)
    loop = asyncio.create_task(warmup.run())
    try:
        await eventually(lambda: asyncio.sleep(0, CheckOutcome.RESTORED in outcomes), within=10)
        caplog.set_level(logging.WARNING, logger="recsys.data.warmup")
        redis_server.freeze()
        try:
            await asyncio.sleep(2.0)
            assert not loop.done()
        finally:
            redis_server.thaw()
        frozen = outcomes.count(CheckOutcome.UNREACHABLE)
        assert frozen >= 2, outcomes  # one check per socket timeout, no spinning
        assert frozen <= 2.0 / 0.2 + 1, outcomes
        unreachable = [r for r in caplog.records if "cannot reach" in r.getMessage()]
        assert len(unreachable) == 1  # once per outage, not once per check
        # Thawed: the loop carries on and restores a store that lost its keys.
        await eventually(lambda: asyncio.sleep(0, outcomes[-1] is CheckOutcome.LOADED), within=5)
        await direct.flushall()
        await eventually(lambda: asyncio.sleep(0, outcomes[-1] is CheckOutcome.RESTORED), within=5)
        assert not loop.done()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await direct.aclose()
        await marker.close()


async def test_warmups_racing_load_once(redis_server: OwnRedis, snapshot_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    registries = [CollectorRegistry() for _ in range(3)]
    markers = [marker_on(redis_server) for _ in registries]
    warmups = [
        warmup_on(marker, snapshot_path, metrics=FeatureRestoreMetrics(registry))
        for marker, registry in zip(markers, registries, strict=True)
    ]
    try:
        first = await asyncio.gather(*(warmup.check() for warmup in warmups))
        assert first.count(CheckOutcome.RESTORED) == 1, first
        assert set(first) <= {CheckOutcome.RESTORED, CheckOutcome.BUSY, CheckOutcome.LOADED}
        second = await asyncio.gather(*(warmup.check() for warmup in warmups))
        assert second == [CheckOutcome.LOADED] * 3
        assert sum(restores(registry, "restored") for registry in registries) == 1
        record = await markers[0].loaded()
        assert record is not None
        assert record["embedding_version"] == "als-7"
        assert record["users"] == str(USERS)
        assert record["source"] == "warm-up"
        # Every process sees the one load (and would refresh its default embedding).
        assert {warmup.last_load_id for warmup in warmups} == {record["load_id"]}
    finally:
        for marker in markers:
            await marker.close()


async def test_a_lock_whose_holder_died_expires(
    redis_server: OwnRedis, snapshot_path: Path
) -> None:
    marker = marker_on(redis_server)
    warmup = warmup_on(marker, snapshot_path)
    try:
        assert await marker.try_lock("died-mid-load", 0.5)
        assert await warmup.check() is CheckOutcome.BUSY
        await asyncio.sleep(0.6)
        assert await warmup.check() is CheckOutcome.RESTORED
    finally:
        await marker.close()


async def test_a_restore_longer_than_its_lock_keeps_it(
    redis_server: OwnRedis, snapshot_path: Path
) -> None:
    @contextlib.asynccontextmanager
    async def slow() -> AsyncIterator[None]:
        await asyncio.sleep(1.0)  # over three lock lifetimes: only renewals keep it
        yield None

    markers = [marker_on(redis_server) for _ in range(2)]
    slow_one = warmup_on(markers[0], snapshot_path, tombstones=slow, lock_seconds=0.3)
    other = warmup_on(markers[1], snapshot_path, lock_seconds=0.3)
    try:
        restoring = asyncio.create_task(slow_one.check())
        for _ in range(4):
            await asyncio.sleep(0.25)
            assert await other.check() is CheckOutcome.BUSY
        assert await restoring is CheckOutcome.RESTORED
        assert await other.check() is CheckOutcome.LOADED
    finally:
        for marker in markers:
            await marker.close()


async def test_a_redis_restarted_during_a_load_is_not_marked_loaded(
    redis_server: OwnRedis, snapshot_path: Path
) -> None:
    restarts = 0

    @contextlib.asynccontextmanager
    async def restart_first() -> AsyncIterator[None]:
        # Runs inside the load, with the lock held: the restart takes the lock with it.
        nonlocal restarts
        if restarts == 0:
            restarts += 1
            redis_server.kill()
            redis_server.start()
        yield None

    marker = marker_on(redis_server)
    warmup = warmup_on(marker, snapshot_path, tombstones=restart_first)
    try:
        assert await warmup.check() is CheckOutcome.FAILED
        assert await marker.loaded() is None  # written to, but not marked: loaded again
        assert await warmup.check() is CheckOutcome.RESTORED
        assert await marker.loaded() is not None
    finally:
        await marker.close()


def test_recsys_data_features_marks_the_store_loaded(
    tmp_path: Path, redis_server: OwnRedis, snapshot_path: Path
) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nnamespace = "{NAMESPACE}"\n'
        f'[features]\nstore = "redis"\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "meta.db"}"\n'
    )
    result = CliRunner().invoke(
        app, ["data", "features", str(snapshot_path), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output

    async def check() -> tuple[dict[str, str] | None, CheckOutcome]:
        marker = marker_on(redis_server)
        try:
            return await marker.loaded(), await warmup_on(marker, snapshot_path).check()
        finally:
            await marker.close()

    record, outcome = asyncio.run(check())
    assert record is not None
    assert record["source"] == "recsys data features"
    assert record["path"] == str(snapshot_path)
    assert outcome is CheckOutcome.LOADED  # loaded by hand: the warm-up leaves it be
