"""The MovieLens loader on ../shared/data/ml-100k (never the network), and loading a catalogue
into the SQL and feature stores through their ports."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.data.catalogue import load_catalogue, primary_categories
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
    assert first.categories == ("Animation", "Children's", "Comedy")
    items = {item.item_id: item for item in catalogue.items}
    # The most specific genre, not the first by name (Crime has far fewer films than Drama).
    assert (items[56].category, items[56].categories) == ("Crime", ("Crime", "Drama"))  # Pulp F.
    assert (items[100].category, items[100].categories) == ("Crime", ("Crime", "Drama", "Thriller"))
    assert items[267].categories == ("unknown",)  # no genre at all
    assert all(item.category in item.categories for item in catalogue.items)
    assert all(list(item.categories) == sorted(set(item.categories)) for item in catalogue.items)
    assert not any("unknown" in item.categories and len(item.categories) > 1
                   for item in catalogue.items)  # fmt: skip
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
    assert [item.categories for item in catalogue.items] == [("Adventure", "Animation"),
                                                             ("Action",)]  # fmt: skip
    assert [user.user_id for user in catalogue.users] == ["1", "2"]
    assert [event.value for event in catalogue.interactions] == [4.0, 3.5, 5.0]


def test_ratings_csv_layout_takes_the_most_specific_genre(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Pulp Fiction (1994),Comedy|Crime|Drama\n"
        "2,Heat (1995),Action|Crime|Drama\n"
        "3,Clueless (1995),Comedy|Romance\n"
        "4,Casino (1995),Drama\n"
        "5,Antz (1998),Comedy\n"
        "6,Heat again,Drama|Comedy|Crime|Action\n"
        "7,Nothing,(no genres listed)\n"
    )
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    items = {item.item_id: item for item in load_movielens(tmp_path).items}
    # Items per genre: Comedy 4, Drama 4, Crime 3, Action 2, Romance 1.
    assert {item: items[item].category for item in items} == {
        1: "Crime", 2: "Action", 3: "Romance", 4: "Drama", 5: "Comedy", 6: "Action",
        7: "unknown",
    }  # fmt: skip
    assert items[6].categories == ("Action", "Comedy", "Crime", "Drama")
    assert items[7].categories == ("unknown",)


def test_primary_categories_ignore_the_order_of_genres_and_items() -> None:
    genres = {1: ["Drama", "Crime"], 2: ["Drama"], 3: ["Crime", "Drama"], 4: ["Noir", "Film"],
              5: ["unknown"], 6: ["unknown", "Drama"], 7: []}  # fmt: skip
    expected = {1: "Crime", 2: "Drama", 3: "Crime", 4: "Film", 5: "unknown", 6: "Drama",
                7: "unknown"}  # fmt: skip
    assert primary_categories(genres) == expected
    backwards = {item: list(reversed(genres[item])) for item in reversed(list(genres))}
    assert primary_categories(backwards) == expected


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
        # Every category reaches the SQL store; the features keep the primary one.
        stored = await metadata.get_items([56])
        assert (stored[56].category, stored[56].categories) == ("Crime", ("Crime", "Drama"))
        dramas = await metadata.popular_items(category="Drama", limit=2_000)
        assert 56 in dramas
        assert len(dramas) == sum("Drama" in item.categories for item in catalogue.items)
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
    # One to three categories an item, sorted; the primary one is the smallest of them.
    sizes = Counter(category for item in first.items for category in item.categories)
    assert {len(item.categories) for item in first.items} == {1, 2, 3}
    for item in first.items:
        assert list(item.categories) == sorted(set(item.categories))
        assert item.category == min(item.categories, key=lambda name: (sizes[name], name))
