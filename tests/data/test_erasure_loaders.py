"""The loaders honour erasure: a catalogue or feature snapshot loaded after a user was erased
leaves that user out (the tombstone in the metadata store), and only that user."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.data.catalogue import Catalogue, Skipped, load_catalogue, skip_erased
from recsys.data.features_file import FeatureSnapshot, load_into_store
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.metadata.database import create_engine
from recsys.metadata.migrate import upgrade
from recsys.ports.metadata import ItemMetadata, UserProfile
from recsys.settings import DatabaseSettings

USERS = ("a", "a:b", "c")


@pytest.fixture
async def metadata(tmp_path: Path) -> AsyncIterator[SqlMetadataRepository]:
    settings = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
    upgrade(settings)
    repository = SqlMetadataRepository(create_engine(settings))
    yield repository
    await repository.close()


def catalogue() -> Catalogue:
    when = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    return Catalogue(
        items=[ItemMetadata(item, "Drama", popularity=0.5) for item in range(4)],
        users=[UserProfile(user, 30, "US") for user in USERS],
        interactions=[
            Interaction(f"{user}-{item}", user, item, InteractionKind.CLICK, 1.0, when)
            for user in USERS
            for item in range(3)
        ]
        # A user known only by interactions.
        + [Interaction("d-0", "d", 0, InteractionKind.VIEW, 1.0, when)],
    )


def snapshot() -> FeatureSnapshot:
    users = len(USERS)
    return FeatureSnapshot(
        embedding_version="als-1",
        generated_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        user_ids=list(USERS),
        user_vectors=np.arange(users * 2, dtype=np.float32).reshape(users, 2),
        preference_categories=["Drama"],
        user_preferences=np.ones((users, 1), np.float32),
        item_ids=np.array([0, 1], np.int64),
        item_categories=["Drama", "Drama"],
        item_popularity=np.array([0.5, 0.5], np.float32),
        item_freshness=np.array([0.5, 0.5], np.float32),
        item_vectors=np.ones((2, 2), np.float32),
        default_user_vector=np.zeros(2, np.float32),
    )


def test_without_users_drops_profiles_and_interactions_only() -> None:
    full = catalogue()
    assert full.user_ids == ["a", "a:b", "c", "d"]
    kept, skipped = skip_erased(full, {"a", "d"})
    assert [user.user_id for user in kept.users] == ["a:b", "c"]
    assert {event.user_id for event in kept.interactions} == {"a:b", "c"}
    assert kept.items == full.items
    assert skipped == Skipped(users=2, profiles=1, interactions=4)
    assert skip_erased(full, set()) == (full, Skipped())
    assert skipped.describe() == "skipped 2 erased users (1 profiles, 4 interactions)"


async def test_a_catalogue_reload_leaves_erased_users_out(
    metadata: SqlMetadataRepository,
) -> None:
    first = await load_catalogue(catalogue(), metadata=metadata, features=None)
    assert first == Skipped()
    await metadata.erase_user("a")
    await metadata.erase_user("d")

    progress: dict[str, int] = {}
    again = await load_catalogue(
        catalogue(),
        metadata=metadata,
        features=None,
        progress=lambda stage, count: progress.__setitem__(stage, progress.get(stage, 0) + count),
    )
    assert again == Skipped(users=2, profiles=1, interactions=4)
    profile = await metadata.get_user("a")
    assert profile is not None
    assert profile.deleted  # still only the marker
    assert await metadata.consumed_item_ids("a") == set()
    assert await metadata.consumed_item_ids("d") == set()
    assert await metadata.consumed_item_ids("a:b") == {0, 1, 2}
    neighbour = await metadata.get_user("a:b")
    assert neighbour is not None
    assert not neighbour.deleted
    # The progress bars still complete: skipped rows count as done.
    assert progress == {"items": 4, "users": 3, "interactions": 10}


async def test_a_feature_snapshot_load_leaves_erased_users_out(
    metadata: SqlMetadataRepository,
) -> None:
    await metadata.erase_user("a")
    store = InMemoryFeatureStore()
    assert await load_into_store(snapshot(), store, metadata=metadata) == 1
    assert (await store.get_user_features("a")).empty
    for row, user in enumerate(USERS[1:], start=1):
        features = await store.get_user_features(user)
        assert features.embedding is not None
        np.testing.assert_array_equal(features.embedding.vector, snapshot().user_vectors[row])
        assert dict(features.preferences) == {"Drama": 1.0}
    assert (await store.get_item_features([0, 1])).found.all()
    assert await store.get_default_user_embedding() is not None

    fresh = InMemoryFeatureStore()  # no metadata: a fresh deployment, nobody erased
    assert await load_into_store(snapshot(), fresh) == 0
    assert (await fresh.get_user_features("a")).embedding is not None


def test_a_snapshot_without_users_keeps_rows_aligned() -> None:
    full = snapshot()
    kept = full.without_users({"a:b", "unknown"})
    assert kept.user_ids == ["a", "c"]
    np.testing.assert_array_equal(kept.user_vectors, full.user_vectors[[0, 2]])
    assert kept.user_preferences.shape == (2, 1)
    assert full.without_users({"unknown"}) is full


async def test_a_restart_preload_leaves_erased_users_out(
    metadata: SqlMetadataRepository, tmp_path: Path
) -> None:
    # The embedded mode loads features.preload_path at every start: not for erased users.
    from recsys.composition import Components
    from recsys.data.features_file import save_features
    from tests.conftest import make_settings

    await metadata.erase_user("a")
    path = tmp_path / "features.npz"
    save_features(path, snapshot())
    settings = make_settings(
        tmp_path,
        features={"store": "in_memory", "preload_path": str(path)},
        database={"url": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"},
    )
    components = Components(settings)
    async with components.resources:
        store = components.feature_store
        for hook in components.startup_hooks:
            await hook()
        assert await store.get_user_embedding("a") is None
        assert await store.get_user_embedding("a:b") is not None
