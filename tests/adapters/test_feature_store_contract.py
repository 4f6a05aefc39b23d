"""The FeatureStore contract, run against every adapter: in-memory, Redis (the real standalone
server) and a 3-master Redis Cluster."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.ports.features import FeatureStore, ItemFeatures, UserEmbedding
from tests.support.redis_cluster import REDIS_KINDS, redis_client, remove_keys

# Small bounds so the window and `keep` show in a few events.
WINDOW_SECONDS = 600
KEEP = 3


class Clock:
    """The stores' wall clock, moved by the tests (reads cut the window at its time)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["in_memory", *REDIS_KINDS])
async def store(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[FeatureStore]:
    if request.param == "in_memory":
        adapter: FeatureStore = InMemoryFeatureStore(
            recent_window_seconds=WINDOW_SECONDS, recent_keep=KEEP, clock=clock
        )
        yield adapter
        return
    from recsys.adapters.redis.features import RedisFeatureStore

    client = redis_client(request, request.param)
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    adapter = RedisFeatureStore(
        client,
        namespace=namespace,
        recent_window_seconds=WINDOW_SECONDS,
        recent_keep=KEEP,
        clock=clock,
    )
    try:
        yield adapter
    finally:
        await remove_keys(client, namespace)
        await adapter.close()


def interaction(
    clock: Clock,
    item_id: int,
    seconds_ago: float = 0.0,
    *,
    user_id: str = "u1",
    kind: InteractionKind = InteractionKind.VIEW,
) -> Interaction:
    return Interaction(
        f"{user_id}-{item_id}-{seconds_ago}",
        user_id,
        item_id,
        kind,
        0.0,
        clock.now - dt.timedelta(seconds=seconds_ago),
    )


async def recent(store: FeatureStore, user_id: str = "u1") -> tuple[int, ...]:
    return (await store.get_user_features(user_id)).recent_item_ids


def embedding(seed: int = 0, version: str = "emb-7") -> UserEmbedding:
    vector = np.random.default_rng(seed).normal(size=32).astype(np.float32)
    return UserEmbedding(vector, version, dt.datetime(2026, 11, 29, 10, tzinfo=dt.UTC))


async def test_missing_user_has_no_embedding(store: FeatureStore) -> None:
    assert await store.get_user_embedding("nobody") is None


async def test_put_then_get_returns_an_equal_copy(store: FeatureStore) -> None:
    original = embedding()
    await store.put_user_embedding("u1", original)
    original.vector[:] = 0  # the caller's later writes must not reach the store
    got = await store.get_user_embedding("u1")
    assert got is not None
    np.testing.assert_array_equal(got.vector, embedding().vector)
    assert got.vector.dtype == np.float32
    assert (got.embedding_version, got.generated_at) == ("emb-7", embedding().generated_at)


async def test_put_replaces(store: FeatureStore) -> None:
    await store.put_user_embedding("u1", embedding(1))
    await store.put_user_embedding("u1", embedding(2))
    got = await store.get_user_embedding("u1")
    assert got is not None
    np.testing.assert_array_equal(got.vector, embedding(2).vector)


async def test_delete_is_idempotent(store: FeatureStore) -> None:
    await store.put_user_embedding("u1", embedding())
    assert await store.delete_user("u1") >= 1
    assert await store.delete_user("u1") == 0
    assert await store.get_user_embedding("u1") is None


async def test_delete_leaves_a_user_whose_id_extends_it_alone(
    store: FeatureStore, clock: Clock
) -> None:
    for user in ("a", "a:b", "a:"):
        await store.put_user_embedding(user, embedding())
        await store.put_user_preferences(user, {"Drama": 1.0})
        await store.record_events(
            [interaction(clock, 1, 2, user_id=user), interaction(clock, 2, 1, user_id=user)]
        )
    deleted = await store.delete_user("a")
    assert deleted >= 2
    assert (await store.get_user_features("a")).empty
    for other in ("a:b", "a:"):
        kept = await store.get_user_features(other)
        assert kept.embedding is not None
        assert dict(kept.preferences) == {"Drama": 1.0}
        assert kept.recent_item_ids == (2, 1)
    assert await store.delete_user("a:b") == deleted  # the same records per user


async def test_item_features_in_order_with_defaults(store: FeatureStore) -> None:
    vector = np.arange(4, dtype=np.float32)
    await store.put_item_features(
        {7: ItemFeatures("Action", 0.9, 0.25, vector), 3: ItemFeatures("Drama", 0.1, 1.0)}
    )
    batch = await store.get_item_features([3, 99, 7])
    assert batch.categories == ["Drama", "", "Action"]
    assert batch.found.tolist() == [True, False, True]
    np.testing.assert_allclose(batch.popularity, [0.1, 0.0, 0.9])
    np.testing.assert_allclose(batch.freshness, [1.0, 0.0, 0.25])
    assert batch.embeddings is not None
    np.testing.assert_array_equal(batch.embeddings[2], vector)
    np.testing.assert_array_equal(batch.embeddings[0], np.zeros(4))
    empty = await store.get_item_features([])
    assert empty.categories == []


async def test_item_updates_are_visible(store: FeatureStore) -> None:
    await store.put_item_features({5: ItemFeatures("Action", 0.2, 0.2)})
    await store.get_item_features([5])
    await store.put_item_features({5: ItemFeatures("Comedy", 0.8, 0.2)})
    assert (await store.get_item_features([5])).categories == ["Comedy"]


async def test_user_features_in_one_read(store: FeatureStore, clock: Clock) -> None:
    empty = await store.get_user_features("nobody")
    assert empty.empty
    await store.put_user_embedding("u1", embedding())
    await store.put_user_preferences("u1", {"Action": 0.8, "Drama": 0.2})
    await store.record_events([interaction(clock, 5, 30), interaction(clock, 6, 20)])
    await store.record_events([interaction(clock, 7, 10)])
    features = await store.get_user_features("u1")
    assert features.embedding is not None
    np.testing.assert_array_equal(features.embedding.vector, embedding().vector)
    assert dict(features.preferences) == {"Action": 0.8, "Drama": 0.2}
    assert features.recent_item_ids == (7, 6, 5)  # newest first
    assert await store.delete_user("u1") >= 2
    assert (await store.get_user_features("u1")).empty


async def test_recent_items_are_a_window_by_event_time(store: FeatureStore, clock: Clock) -> None:
    await store.record_events(
        [
            interaction(clock, 1, WINDOW_SECONDS + 1),  # already out: changes nothing
            interaction(clock, 2, WINDOW_SECONDS),  # exactly at the edge: inside
            interaction(clock, 3, 60),
        ]
    )
    assert await recent(store) == (3, 2)
    clock.advance(milliseconds=1)
    assert await recent(store) == (3,)  # item 2 aged out, with no write in between
    clock.advance(seconds=WINDOW_SECONDS)
    assert await recent(store) == ()
    assert (await store.get_user_features("u1")).empty


async def test_events_older_than_the_window_change_nothing(
    store: FeatureStore, clock: Clock
) -> None:
    await store.record_events([interaction(clock, 1, WINDOW_SECONDS + 60)])
    assert (await store.get_user_features("u1")).empty
    # Relative to the given `now`, not to the clock.
    await store.record_events(
        [interaction(clock, 2, 60)], now=clock.now + dt.timedelta(seconds=WINDOW_SECONDS)
    )
    assert await recent(store) == ()
    await store.record_events(
        [interaction(clock, 3, WINDOW_SECONDS + 60)],
        now=clock.now - dt.timedelta(seconds=120),
    )
    clock.advance(seconds=-120)  # read at that `now`: it was recorded
    assert await recent(store) == (3,)
    clock.advance(seconds=61)
    assert await recent(store) == ()


async def test_the_newest_keep_items_stay(store: FeatureStore, clock: Clock) -> None:
    await store.record_events([interaction(clock, item, 100 - item) for item in range(1, 6)])
    assert await recent(store) == (5, 4, 3)
    await store.record_events([interaction(clock, 9, 200)])  # older than all three kept
    assert await recent(store) == (5, 4, 3)
    await store.record_events([interaction(clock, 1, 0)])
    assert await recent(store) == (1, 5, 4)


async def test_each_item_is_listed_once_at_its_latest_time(
    store: FeatureStore, clock: Clock
) -> None:
    await store.record_events([interaction(clock, 1, 300), interaction(clock, 2, 200)])
    await store.record_events([interaction(clock, 1, 400)])  # an older event of item 1
    assert await recent(store) == (2, 1)
    await store.record_events([interaction(clock, 1, 100), interaction(clock, 1, 500)])
    assert await recent(store) == (1, 2)
    clock.advance(seconds=WINDOW_SECONDS - 150)
    assert await recent(store) == (1,)  # at 100 s ago, not at 500


async def test_applying_events_again_or_in_another_order_leaves_the_same_state(
    store: FeatureStore, clock: Clock
) -> None:
    events = [interaction(clock, item, seconds) for item, seconds in ((1, 30), (2, 10), (3, 20))]
    await store.record_events(events)
    first = await recent(store)
    await store.record_events(events)
    await store.record_events(events[::-1])
    assert await recent(store) == first == (2, 3, 1)
    for single in events[::-1]:
        await store.record_events([single])
    assert await recent(store) == first


async def test_skips_and_events_without_a_time_are_ignored(
    store: FeatureStore, clock: Clock
) -> None:
    untimed = Interaction("no-time", "u1", 5, InteractionKind.VIEW, 0.0, None)
    await store.record_events([interaction(clock, 4, 10, kind=InteractionKind.SKIP), untimed])
    assert (await store.get_user_features("u1")).empty
    await store.record_events([interaction(clock, 6, 10, kind=InteractionKind.PURCHASE)])
    assert await recent(store) == (6,)


async def test_ties_list_by_item_id_and_the_keep_cut_keeps_the_first_listed(
    store: FeatureStore, clock: Clock
) -> None:
    # As text "10" < "100" < "11" < "9": the order must be by number.
    await store.record_events([interaction(clock, item, 5) for item in (11, 9, 100)])
    assert await recent(store) == (9, 11, 100)
    await store.record_events([interaction(clock, item, 5) for item in (10, 2)])
    assert await recent(store) == (2, 9, 10)
    await store.record_events([interaction(clock, 50, 1)])
    assert await recent(store) == (50, 2, 9)


async def test_one_call_records_many_users(store: FeatureStore, clock: Clock) -> None:
    await store.record_events(
        [
            interaction(clock, 1, 10, user_id="u1"),
            interaction(clock, 2, 20, user_id="u2"),
            interaction(clock, 3, 5, user_id="u2"),
        ]
    )
    assert await recent(store, "u1") == (1,)
    assert await recent(store, "u2") == (3, 2)
    assert await recent(store, "u3") == ()


async def test_a_time_after_now_counts_as_now(store: FeatureStore, clock: Clock) -> None:
    await store.record_events([interaction(clock, 1, -86_400), interaction(clock, 2, 1)])
    assert await recent(store) == (1, 2)
    clock.advance(seconds=WINDOW_SECONDS, milliseconds=1)
    assert await recent(store) == ()


async def test_embedding_versions_are_counted_per_user(store: FeatureStore) -> None:
    assert await store.embedding_version_counts() == {}
    await store.put_user_embedding("u1", embedding(1, "v1"))
    await store.put_user_embedding("u2", embedding(2, "v1"))
    await store.put_user_embedding("u3", embedding(3, "v2"))
    await store.put_default_user_embedding(embedding(0, "v2"))  # not a user's
    await store.put_user_preferences("u4", {"Drama": 1.0})  # no embedding
    assert await store.embedding_version_counts() == {"v1": 2, "v2": 1}
    await store.put_user_embedding("u1", embedding(1, "v2"))  # moves to the new version
    await store.put_user_embedding("u1", embedding(4, "v2"))  # rewritten, same version
    assert await store.embedding_version_counts() == {"v1": 1, "v2": 2}
    await store.delete_user("u2")
    assert await store.embedding_version_counts() == {"v2": 2}  # no version left at 0
    await store.delete_user("u2")
    await store.delete_user("u4")
    await store.delete_user("nobody")
    assert await store.embedding_version_counts() == {"v2": 2}


async def test_a_feature_snapshot_loads_through_the_port(
    store: FeatureStore, tmp_path: Path
) -> None:
    from recsys.data.features_file import (
        FeatureSnapshot,
        load_features,
        load_into_store,
        save_features,
    )

    rng = np.random.default_rng(4)
    snapshot = FeatureSnapshot(
        embedding_version="als-1",
        generated_at=dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
        user_ids=["u1", "u2", "u3"],
        user_vectors=rng.normal(size=(3, 8)).astype(np.float32),
        preference_categories=["", "Drama", "Horror"],
        user_preferences=np.array([[0, 1, 0.5], [0, 0, 0], [0, 0.2, 1]], np.float32),
        item_ids=np.array([10, 11], np.int64),
        item_categories=["Drama", "Horror"],
        item_popularity=np.array([0.9, 0.1], np.float32),
        item_freshness=np.array([0.3, 0.7], np.float32),
        item_vectors=rng.normal(size=(2, 8)).astype(np.float32),
        default_user_vector=np.zeros(8, np.float32),
    )
    path = tmp_path / "features.npz"
    save_features(path, snapshot)
    await load_into_store(load_features(path), store, batch=2)

    first = await store.get_user_features("u1")
    assert first.embedding is not None
    assert first.embedding.embedding_version == "als-1"
    np.testing.assert_array_equal(first.embedding.vector, snapshot.user_vectors[0])
    assert dict(first.preferences) == pytest.approx({"Drama": 1.0, "Horror": 0.5})
    assert dict((await store.get_user_features("u2")).preferences) == {}
    items = await store.get_item_features([11, 10, 12])
    assert items.categories == ["Horror", "Drama", ""]
    assert items.found.tolist() == [True, True, False]
    assert items.embeddings is not None
    np.testing.assert_array_equal(items.embeddings[0], snapshot.item_vectors[1])
    default = await store.get_default_user_embedding()
    assert default is not None
    assert default.embedding_version == "als-1"


def test_a_file_that_is_not_a_feature_snapshot_is_refused(tmp_path: Path) -> None:
    from recsys.data.features_file import load_features
    from recsys.errors import ConfigurationError

    path = tmp_path / "other.npz"
    np.savez(path, vectors=np.zeros((2, 2)))
    with pytest.raises(ConfigurationError, match="not a feature snapshot"):
        load_features(path)
