"""The MetadataRepository contract on SQLite (embedded) and PostgreSQL (real server, one schema
per test), after running the Alembic migrations; the migrations match the table definitions."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.domain.erasure import hashed_subject
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.metadata.database import create_engine, create_migration_engine
from recsys.metadata.migrate import alembic_config, current_revision, upgrade
from recsys.metadata.tables import metadata
from recsys.ports.metadata import ItemMetadata, MetadataRepository, UserProfile
from recsys.settings import DatabaseSettings
from tests.support.services import require_postgres


def database_for(kind: str, tmp_path: Path) -> DatabaseSettings:
    if kind == "sqlite":
        return DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
    return DatabaseSettings(
        url=require_postgres(), schema_name=f"test_{uuid.uuid4().hex[:12]}", pool_size=5
    )


def drop_schema(settings: DatabaseSettings) -> None:
    if settings.schema_name:
        engine = create_migration_engine(settings.model_copy(update={"schema_name": ""}))
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{settings.schema_name}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def repository(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MetadataRepository]:
    settings = database_for(request.param, tmp_path)
    try:
        upgrade(settings)
        upgrade(settings)  # idempotent
        assert current_revision(settings) == "0004"
        adapter = SqlMetadataRepository(create_engine(settings))
        yield adapter
        await adapter.close()
    finally:
        drop_schema(settings)


def event(index: int, user: str = "u1", item: int = 10) -> Interaction:
    return Interaction(
        f"e{index}", user, item + index, InteractionKind.CLICK, 1.0,
        dt.datetime(2026, 11, 29, 10, index, tzinfo=dt.UTC), "homepage",
    )  # fmt: skip


async def test_users_round_trip_and_upsert(repository: MetadataRepository) -> None:
    assert await repository.get_user("u1") is None
    profile = UserProfile("u1", 16, "DE", ("Horror",), ("Action", "Comedy"), (5, 7))
    await repository.upsert_users([profile])
    assert await repository.get_user("u1") == profile
    await repository.upsert_users([UserProfile("u1", 17, "FR")])
    got = await repository.get_user("u1")
    assert got is not None
    assert (got.age, got.country, got.blocked_categories) == (17, "FR", ())


async def test_items_and_popularity(repository: MetadataRepository) -> None:
    await repository.upsert_items(
        [
            ItemMetadata(1, "Action", popularity=0.2),
            ItemMetadata(2, "Action", adult=True, popularity=0.9, available_regions=("US",)),
            ItemMetadata(3, "Drama", popularity=0.5),
        ]
    )
    found = await repository.get_items([2, 3, 99])
    assert set(found) == {2, 3}
    assert found[2].adult
    assert found[2].available_regions == ("US",)
    assert await repository.popular_items(category=None, limit=2) == [2, 3]
    assert await repository.popular_items(category="Action", limit=5) == [2, 1]
    await repository.upsert_items([ItemMetadata(1, "Action", popularity=0.95)])
    assert await repository.popular_items(category="Action", limit=1) == [1]


async def test_items_have_every_category_and_are_found_by_any(
    repository: MetadataRepository,
) -> None:
    await repository.upsert_items(
        [
            ItemMetadata(1, "Crime", popularity=0.5, categories=("Crime", "Drama")),
            ItemMetadata(2, "Drama", popularity=0.9),
            ItemMetadata(3, "Noir", popularity=0.5, categories=("Drama", "Crime", "Noir")),
            ItemMetadata(4, "Comedy", popularity=0.7),
        ]
    )
    found = await repository.get_items([1, 2, 3, 4])
    assert found[1].categories == ("Crime", "Drama")
    assert found[2].categories == ("Drama",)
    assert (found[3].category, found[3].categories) == ("Noir", ("Crime", "Drama", "Noir"))
    # Any of an item's categories matches; popularity descending, then item id.
    assert await repository.popular_items(category="Drama", limit=10) == [2, 1, 3]
    assert await repository.popular_items(category="Crime", limit=10) == [1, 3]
    assert await repository.popular_items(category="Drama", limit=2) == [2, 1]
    assert await repository.popular_items(category="Noir", limit=10) == [3]
    assert await repository.popular_items(category="Jazz", limit=10) == []
    assert await repository.popular_items(category=None, limit=10) == [2, 4, 1, 3]
    # An upsert replaces an item's categories as a whole.
    await repository.upsert_items(
        [ItemMetadata(1, "Comedy", popularity=0.5), ItemMetadata(3, "Noir", popularity=0.95)]
    )
    found = await repository.get_items([1, 3])
    assert (found[1].category, found[1].categories) == ("Comedy", ("Comedy",))
    assert found[3].categories == ("Noir",)
    assert await repository.popular_items(category="Drama", limit=10) == [2]
    assert await repository.popular_items(category="Crime", limit=10) == []
    assert await repository.popular_items(category="Comedy", limit=10) == [4, 1]


async def test_interactions_are_idempotent_on_event_id(repository: MetadataRepository) -> None:
    assert await repository.record_interactions([event(1), event(2)]) == 2
    assert await repository.record_interactions([event(2), event(3)]) == 1
    assert await repository.consumed_item_ids("u1") == {11, 12, 13}
    assert await repository.consumed_item_ids("u2") == set()


async def test_user_activity_ranks_users_by_recent_interactions(
    repository: MetadataRepository,
) -> None:
    at = dt.datetime(2026, 11, 29, 10, 30, tzinfo=dt.UTC)

    def events(user: str, count: int, when: dt.datetime = at) -> list[Interaction]:
        return [
            Interaction(f"{user}-{when:%d}-{index}", user, index, InteractionKind.VIEW, 0.0,
                        when, "homepage")
            for index in range(count)
        ]  # fmt: skip

    old = at - dt.timedelta(days=40)
    await repository.upsert_users([UserProfile("gone", 30), UserProfile("b", 20)])
    await repository.record_interactions(
        events("a", 2) + events("b", 3) + events("c", 2) + events("gone", 9)
        + events("old", 5, old) + events("a", 4, old) + events("tombstoned", 8)
    )  # fmt: skip
    await repository.erase_user("gone")
    # Erased before any profile existed: only a tombstone says so.
    await repository.erase_user("tombstoned")
    await repository.record_interactions(events("tombstoned", 8, at + dt.timedelta(hours=1)))
    since = at - dt.timedelta(days=30)
    assert await repository.user_activity(since) == [("b", 3), ("a", 2), ("c", 2)]
    # The bound is inclusive, and an aware time in another zone means the same instant.
    assert await repository.user_activity(at.astimezone(dt.timezone(dt.timedelta(hours=2)))) == [
        ("b", 3),
        ("a", 2),
        ("c", 2),
    ]
    assert await repository.user_activity(at + dt.timedelta(seconds=1)) == []
    assert await repository.user_activity(old) == [("a", 6), ("old", 5), ("b", 3), ("c", 2)]


async def test_erasure_leaves_only_a_deleted_marker(repository: MetadataRepository) -> None:
    await repository.upsert_users([UserProfile("u1", 30, "US", ("Horror",), ("Action",), (1,))])
    await repository.upsert_users([UserProfile("u2", 40, "US")])
    await repository.record_interactions([event(1), event(2), event(3, user="u2")])
    result = await repository.erase_user("u1")
    assert (result.deleted_interactions, result.profile_erased) == (2, True)
    await repository.write_audit("erase_user", hashed_subject("u1"), {"interactions": 2})
    assert await repository.count_rows_for_user("u1") == {
        "interactions": 0,
        "profile_data": 0,
        "audit_with_plain_id": 0,
    }
    marker = await repository.get_user("u1")
    assert marker is not None
    assert marker.deleted
    assert (marker.age, marker.country, marker.liked_item_ids) == (None, None, ())
    again = await repository.erase_user("u1")
    assert (again.deleted_interactions, again.profile_erased) == (0, False)
    assert await repository.consumed_item_ids("u2") == {13}  # others untouched


async def test_erasure_leaves_a_tombstone_that_names_only_that_user(
    repository: MetadataRepository,
) -> None:
    await repository.upsert_users([UserProfile("a", 30), UserProfile("a:b", 31)])
    assert await repository.erased_user_ids(["a", "a:b", "nobody"]) == set()
    await repository.erase_user("a")
    await repository.erase_user("a")  # idempotent: one tombstone
    await repository.erase_user("never-loaded")  # erasure before any data: still recorded
    assert await repository.erased_user_ids(["a", "a:b", "a:", "nobody", "never-loaded"]) == {
        "a",
        "never-loaded",
    }
    assert await repository.erased_user_ids([]) == set()
    # Many ids at once (the loaders ask for a whole catalogue).
    many = [f"user{index}" for index in range(12_000)] + ["a"]
    assert await repository.erased_user_ids(many) == {"a"}
    # A reload of the profile does not lift the tombstone.
    await repository.upsert_users([UserProfile("a", 30)])
    assert await repository.erased_user_ids(["a"]) == {"a"}
    assert await repository.count_rows_for_user("a:b") == {
        "interactions": 0,
        "profile_data": 1,
        "audit_with_plain_id": 0,
    }


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_the_migration_records_users_erased_before_it(kind: str, tmp_path: Path) -> None:
    """Revision 0002 backfills tombstones from the deleted markers of revision 0001."""
    settings = database_for(kind, tmp_path)
    try:
        upgrade(settings, "0001")
        engine = create_migration_engine(settings)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO users (user_id, blocked_categories, onboarding_categories, "
                    "liked_item_ids, deleted_at) VALUES "
                    "('gone', '[]', '[]', '[]', CURRENT_TIMESTAMP), "
                    "('here', '[]', '[]', '[]', NULL)"
                )
            )
        engine.dispose()
        upgrade(settings)
        assert current_revision(settings) == "0004"
        repository = SqlMetadataRepository(create_engine(settings))
        try:
            assert await repository.erased_user_ids(["gone", "here"]) == {"gone"}
        finally:
            await repository.close()
    finally:
        drop_schema(settings)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_the_migration_gives_existing_items_their_category(kind: str, tmp_path: Path) -> None:
    """Revision 0004 fills `item_categories` from `items.category`; its downgrade drops it."""
    from alembic import command

    settings = database_for(kind, tmp_path)
    try:
        upgrade(settings, "0003")
        engine = create_migration_engine(settings)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO items (item_id, category, adult, available_regions, popularity) "
                    "VALUES (1, 'Drama', false, '[]', 0.2), (2, 'Crime', false, '[]', 0.9)"
                )
            )
        engine.dispose()
        upgrade(settings)
        assert current_revision(settings) == "0004"
        repository = SqlMetadataRepository(create_engine(settings))
        try:
            found = await repository.get_items([1, 2])
            assert (found[1].categories, found[2].categories) == (("Drama",), ("Crime",))
            assert await repository.popular_items(category="Drama", limit=5) == [1]
        finally:
            await repository.close()
        command.downgrade(alembic_config(settings), "0003")
        assert current_revision(settings) == "0003"
        engine = create_migration_engine(settings)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM items")).scalar_one() == 2
            with pytest.raises(DBAPIError, match="item_categories"):
                connection.execute(text("SELECT count(*) FROM item_categories"))
        engine.dispose()
    finally:
        drop_schema(settings)


def test_migrations_match_the_table_definitions(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    settings = database_for("sqlite", tmp_path)
    upgrade(settings)
    engine = create_migration_engine(settings)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert differences == []


async def test_a_read_survives_the_server_dropping_its_connection(tmp_path: Path) -> None:
    # pg_terminate_backend on pooled connections (a restart, an operator): a read retries once on
    # a fresh connection instead of failing. No pre-ping, so the dead connection is used.
    settings = database_for("postgresql", tmp_path).model_copy(update={"pool_pre_ping": False})
    try:
        upgrade(settings)
        adapter = SqlMetadataRepository(create_engine(settings))
        await adapter.upsert_users([UserProfile("u1", 30, "US")])
        await adapter.record_interactions([event(1)])
        assert await adapter.consumed_item_ids("u1") == {11}
        admin = create_migration_engine(settings.model_copy(update={"schema_name": ""}))
        with admin.begin() as connection:
            terminated = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": f"recsys/{settings.schema_name}"},
            ).scalar_one()
        admin.dispose()
        assert terminated >= 1
        assert await adapter.consumed_item_ids("u1") == {11}
        assert (await adapter.get_user("u1")) is not None
        await adapter.close()
    finally:
        drop_schema(settings)
