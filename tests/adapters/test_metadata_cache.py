"""The in-process item metadata cache (adapters/metadata_cache): what it serves, its bound, and
its invalidation by the catalogue version that every item write bumps (SQLite and PostgreSQL,
a second repository on the same database standing for another process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from recsys.adapters.metadata_cache.cached import CachedMetadataRepository
from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.composition import Components
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.metadata.database import create_engine
from recsys.metadata.migrate import upgrade
from recsys.ports.metadata import ItemMetadata, UserProfile
from recsys.settings import MetadataCacheSettings
from tests.adapters.test_metadata_contract import database_for, drop_schema
from tests.conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SqlMetadataRepository, SqlMetadataRepository]]:
    """The serving process's repository and another process's (the catalogue loader)."""
    settings = database_for(request.param, tmp_path)
    try:
        upgrade(settings)
        serving = SqlMetadataRepository(create_engine(settings))
        loader = SqlMetadataRepository(create_engine(settings))
        await loader.upsert_items([ItemMetadata(item, "books") for item in range(1, 6)])
        yield serving, loader
        await serving.close()
        await loader.close()
    finally:
        drop_schema(settings)


def cached(
    inner: SqlMetadataRepository, clock: Clock | None = None, **settings: float
) -> CachedMetadataRepository:
    return CachedMetadataRepository(
        inner, MetadataCacheSettings(**settings), clock=clock or Clock()
    )


async def test_every_item_write_bumps_the_catalogue_version(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, loader = stores
    before = await serving.catalogue_version()
    await loader.upsert_items([ItemMetadata(1, "music")])
    after_one = await serving.catalogue_version()
    await loader.upsert_items([ItemMetadata(2, "music"), ItemMetadata(9, "films")])
    assert before < after_one < await serving.catalogue_version()


async def test_a_write_of_another_process_is_served_after_the_version_poll(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, loader = stores
    cache = cached(serving)
    try:
        assert (await cache.get_items([1, 2]))[1].category == "books"
        await loader.upsert_items([ItemMetadata(1, "music", adult=True)])
        # Until the poll reads the new version the cached row is served (the documented bound).
        assert (await cache.get_items([1]))[1].category == "books"
        await cache.refresh_version()  # what the poll does every version_poll_seconds
        served = await cache.get_items([1, 2])
        assert (served[1].category, served[1].adult) == ("music", True)
        assert served[2].category == "books"
    finally:
        await cache.stop_polling()


async def test_the_background_poll_picks_the_write_up(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, loader = stores
    cache = cached(serving, version_poll_seconds=0.01)
    try:
        await cache.get_items([3])
        dropped = asyncio.Event()
        clear = cache.clear

        def clear_and_tell() -> None:
            clear()
            dropped.set()

        cache.clear = clear_and_tell  # type: ignore[method-assign]
        await loader.upsert_items([ItemMetadata(3, "games")])
        async with asyncio.timeout(30):  # a generous wait, not a latency assertion
            await dropped.wait()
        assert (await cache.get_items([3]))[3].category == "games"
    finally:
        await cache.stop_polling()


async def test_hits_are_served_without_reading_the_store_and_expire_by_ttl(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, loader = stores
    clock = Clock()
    cache = cached(serving, clock, ttl_seconds=60)
    try:
        await cache.get_items([1, 2, 3])
        assert (cache.hits, cache.misses) == (0, 3)
        # A write the poll has not seen yet: the hit is the cached row, not the store's.
        await loader.upsert_items([ItemMetadata(2, "music")])
        assert (await cache.get_items([2, 3]))[2].category == "books"
        assert (cache.hits, cache.misses) == (2, 3)
        clock.now += 61  # past the TTL: read again whatever the poll saw
        assert (await cache.get_items([2]))[2].category == "music"
        assert cache.misses == 4
    finally:
        await cache.stop_polling()


async def test_the_cache_is_bounded_by_item_count_least_recently_used_first(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, _ = stores
    cache = cached(serving, max_items=3)
    try:
        await cache.get_items([1, 2, 3])
        await cache.get_items([1])  # 1 used again: 2 is now the least recently used
        await cache.get_items([4])
        assert list(cache.entries) == [3, 1, 4]
        await cache.get_items([5, 2])
        assert len(cache.entries) == 3
        assert set(cache.entries) == {4, 5, 2}
    finally:
        await cache.stop_polling()


async def test_a_write_through_the_cache_is_served_at_once(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, _ = stores
    cache = cached(serving)
    try:
        await cache.get_items([1, 2])
        await cache.upsert_items([ItemMetadata(1, "music")])
        served = await cache.get_items([1, 2])
        assert (served[1].category, served[2].category) == ("music", "books")
    finally:
        await cache.stop_polling()


class SlowInner(SqlMetadataRepository):
    """Holds `get_items` until released: a read in flight while the catalogue changes."""

    def __init__(self, inner: SqlMetadataRepository) -> None:
        super().__init__(inner.engine)
        self.rows_read = asyncio.Event()
        self.release = asyncio.Event()

    async def get_items(self, item_ids: Sequence[int]) -> dict[int, ItemMetadata]:
        rows = await super().get_items(item_ids)
        self.rows_read.set()
        await self.release.wait()
        return rows


async def test_rows_read_before_a_catalogue_change_are_not_kept(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, loader = stores
    slow = SlowInner(serving)
    cache = cached(slow)
    try:
        await cache.refresh_version()
        read = asyncio.create_task(cache.get_items([1]))
        await slow.rows_read.wait()  # the rows are read, the answer held
        await loader.upsert_items([ItemMetadata(1, "music")])
        await cache.refresh_version()
        slow.release.set()
        assert (await read)[1].category == "books"  # this request's read, as it was
        assert 1 not in cache.entries  # but not kept: it predates the write
        assert (await cache.get_items([1]))[1].category == "music"
    finally:
        await cache.stop_polling()


async def test_user_data_is_never_cached_so_erasure_is_served_at_once(
    stores: tuple[SqlMetadataRepository, SqlMetadataRepository],
) -> None:
    serving, loader = stores
    cache = cached(serving)
    try:
        await loader.upsert_users([UserProfile("u1", age=30, country="DE")])
        await loader.record_interactions(
            [Interaction("e1", "u1", 1, InteractionKind.CLICK, 1.0, None, "homepage")]
        )
        assert (await cache.get_user("u1")) is not None
        assert await cache.consumed_item_ids("u1") == {1}
        # Erased by another process (the erasure path): the next reads see it.
        await loader.erase_user("u1")
        profile = await cache.get_user("u1")
        assert profile is not None
        assert profile.deleted
        assert profile.age is None
        assert await cache.consumed_item_ids("u1") == set()
    finally:
        await cache.stop_polling()


async def test_the_composition_wraps_the_repository_unless_disabled(tmp_path: Path) -> None:
    for enabled, expected in ((True, CachedMetadataRepository), (False, SqlMetadataRepository)):
        settings = make_settings(tmp_path, metadata_cache={"enabled": enabled})
        components = Components(settings)
        async with components.resources:
            assert type(components.metadata) is expected
