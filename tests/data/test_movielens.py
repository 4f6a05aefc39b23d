"""The MovieLens loader on ../shared/data/ml-100k (never the network), and loading a catalogue
into the SQL and feature stores through their ports."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.data.catalogue import load_catalogue
from recsys.data.movielens import country_from_zip, load_movielens
from recsys.data.synthetic import synthetic_catalogue
from recsys.metadata.database import create_engine
from recsys.metadata.migrate import upgrade
from recsys.settings import DatabaseSettings


def test_counts_of_ml_100k(movielens_path: Path) -> None:
    catalogue = load_movielens(movielens_path)
    assert len(catalogue.interactions) == 100_000
    assert len(catalogue.users) == 943
    assert len(catalogue.items) == 1_682
    assert "Drama" in catalogue.categories
    assert catalogue.titles[1] == "Toy Story (1995)"
    first = next(item for item in catalogue.items if item.item_id == 1)
    assert first.category == "Animation"  # Toy Story: Animation|Children's|Comedy
    countries = Counter(user.country for user in catalogue.users)
    assert countries["US"] > 900
    assert countries["CA"] > 0
    assert all(user.age is not None for user in catalogue.users)
    most_rated = max(catalogue.items, key=lambda item: item.popularity)
    assert most_rated.popularity == 1.0
    assert all(0 <= catalogue.freshness[item.item_id] <= 1 for item in catalogue.items)


def test_ratings_csv_layout(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,Heat (1995),Action\n"
    )
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,5.0,964983815\n"
    )
    catalogue = load_movielens(tmp_path)
    assert [item.category for item in catalogue.items] == ["Adventure", "Action"]
    assert [user.user_id for user in catalogue.users] == ["1", "2"]
    assert [event.value for event in catalogue.interactions] == [4.0, 3.5, 5.0]


def test_country_from_zip() -> None:
    assert country_from_zip("85711") == "US"
    assert country_from_zip("T8H1N") == "CA"
    assert country_from_zip("E2A4H") == "CA"
    assert country_from_zip("l1") is None


async def test_catalogue_loads_into_the_stores(movielens_path: Path, tmp_path: Path) -> None:
    catalogue = load_movielens(movielens_path)
    database = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'ml.db'}")
    upgrade(database)
    metadata = SqlMetadataRepository(create_engine(database))
    features = InMemoryFeatureStore()
    try:
        await load_catalogue(catalogue, metadata=metadata, features=features)
        assert len(await metadata.consumed_item_ids("1")) == 272  # user 1 rated 272 movies
        top = await metadata.popular_items(category=None, limit=1)
        assert top == [max(catalogue.items, key=lambda item: item.popularity).item_id]
        batch = await features.get_item_features([1, 50])
        assert batch.found.tolist() == [True, True]
        assert batch.categories[0] == "Animation"
        profile = await metadata.get_user("1")
        assert profile is not None
        assert (profile.age, profile.country) == (24, "US")
    finally:
        await metadata.close()


def test_synthetic_catalogue_is_deterministic_and_shaped() -> None:
    first = synthetic_catalogue(5_000, 200, interactions_per_user=10, seed=3)
    again = synthetic_catalogue(5_000, 200, interactions_per_user=10, seed=3)
    assert first.items == again.items
    assert first.interactions == again.interactions
    assert len(first.items) == 5_000
    assert len(first.interactions) == 2_000
    adult_share = sum(item.adult for item in first.items) / 5_000
    restricted_share = sum(bool(item.available_regions) for item in first.items) / 5_000
    assert 0.01 < adult_share < 0.06
    assert 0.06 < restricted_share < 0.14
    assert any(user.age is not None and user.age < 18 for user in first.users)
    # Tastes: a user's interactions concentrate on few categories.
    categories = {item.item_id: item.category for item in first.items}
    per_user = Counter((event.user_id, categories[event.item_id]) for event in first.interactions)
    top_share = max(count for (user, _), count in per_user.items() if user == "user0") / 10
    assert top_share >= 0.3
