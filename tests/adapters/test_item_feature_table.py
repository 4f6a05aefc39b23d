"""ItemFeatureTable: columnar item features, read as `batch_from` would pack them."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import InvalidArgument
from recsys.ports.features import ItemFeatureBatch, ItemFeatures, ItemFeatureTable, batch_from


def assert_same_batch(actual: ItemFeatureBatch, expected: ItemFeatureBatch) -> None:
    assert actual.categories == expected.categories
    np.testing.assert_array_equal(actual.found, expected.found)
    np.testing.assert_array_equal(actual.popularity, expected.popularity)
    np.testing.assert_array_equal(actual.freshness, expected.freshness)
    assert actual.popularity.dtype == np.float32
    assert actual.freshness.dtype == np.float32
    if expected.embeddings is None:
        assert actual.embeddings is None
    else:
        assert actual.embeddings is not None
        assert actual.embeddings.dtype == np.float32
        np.testing.assert_array_equal(actual.embeddings, expected.embeddings)


def vector(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def test_missing_ids_get_the_defaults() -> None:
    table = ItemFeatureTable()
    table.upsert(
        {7: ItemFeatures("Action", 0.9, 0.25, vector(1, 2)), 3: ItemFeatures("Drama", 0.1, 1.0)}
    )
    batch = table.lookup([3, 99, 7, -5, 0])
    assert batch.categories == ["Drama", "", "Action", "", ""]
    assert batch.found.tolist() == [True, False, True, False, False]
    np.testing.assert_array_equal(batch.popularity, vector(0.1, 0, 0.9, 0, 0))
    np.testing.assert_array_equal(batch.freshness, vector(1.0, 0, 0.25, 0, 0))
    assert batch.embeddings is not None
    np.testing.assert_array_equal(batch.embeddings, [[0, 0], [0, 0], [1, 2], [0, 0], [0, 0]])


def test_duplicates_in_the_query_repeat_the_item() -> None:
    table = ItemFeatureTable()
    table.upsert({5: ItemFeatures("Comedy", 0.5, 0.5, vector(3))})
    batch = table.lookup([5, 6, 5])
    assert batch.categories == ["Comedy", "", "Comedy"]
    assert batch.found.tolist() == [True, False, True]
    assert batch.embeddings is not None
    np.testing.assert_array_equal(batch.embeddings, [[3], [0], [3]])


def test_empty_table_and_empty_query() -> None:
    table = ItemFeatureTable()
    assert len(table) == 0
    batch = table.lookup([1, 2])
    assert_same_batch(batch, batch_from([None, None]))
    table.upsert({1: ItemFeatures("Drama", 0.2, 0.3)})
    assert_same_batch(table.lookup([]), batch_from([]))
    table.upsert({})
    assert len(table) == 1


def test_without_embeddings_the_batch_has_none() -> None:
    table = ItemFeatureTable()
    table.upsert({1: ItemFeatures("Drama", 0.2, 0.3), 2: ItemFeatures("Drama", 0.4, 0.5, vector())})
    assert table.dimension == 0
    assert table.lookup([1, 2]).embeddings is None
    # An item with an embedding that is not asked for does not give the batch a matrix.
    table.upsert({3: ItemFeatures("Action", 0.1, 0.1, vector(1, 1, 1))})
    assert table.dimension == 3
    assert table.lookup([1, 2, 4]).embeddings is None


def test_updates_replace_add_and_leave_returned_batches_alone() -> None:
    table = ItemFeatureTable()
    table.upsert(
        {5: ItemFeatures("Action", 0.2, 0.2, vector(1, 0)), 9: ItemFeatures("Drama", 0.9, 0.9)}
    )
    before = table.lookup([5, 9, 2])
    table.upsert(
        {5: ItemFeatures("Comedy", 0.8, 0.1), 2: ItemFeatures("Horror", 0.3, 0.4, vector(0, 1))}
    )
    after = table.lookup([5, 9, 2])
    assert after.categories == ["Comedy", "Drama", "Horror"]
    assert after.found.all()
    np.testing.assert_array_equal(after.popularity, vector(0.8, 0.9, 0.3))
    assert after.embeddings is not None
    # Item 5 no longer has an embedding: its row is the default zero vector.
    np.testing.assert_array_equal(after.embeddings, [[0, 0], [0, 0], [0, 1]])
    assert before.categories == ["Action", "Drama", ""]
    assert before.embeddings is not None
    np.testing.assert_array_equal(before.embeddings, [[1, 0], [0, 0], [0, 0]])
    assert len(table) == 3


def test_the_table_keeps_a_copy_of_the_embeddings() -> None:
    table = ItemFeatureTable()
    embedding = vector(1, 2)
    table.upsert({1: ItemFeatures("Drama", 0.1, 0.1, embedding)})
    embedding[:] = 7
    batch = table.lookup([1])
    assert batch.embeddings is not None
    np.testing.assert_array_equal(batch.embeddings, [[1, 2]])
    batch.embeddings[:] = 9  # a reader changing its batch does not change the table
    again = table.lookup([1]).embeddings
    assert again is not None
    np.testing.assert_array_equal(again, [[1, 2]])


def test_embeddings_share_one_dimension() -> None:
    table = ItemFeatureTable()
    table.upsert({1: ItemFeatures("Drama", 0.1, 0.1, vector(1, 2))})
    with pytest.raises(InvalidArgument, match="dimension"):
        table.upsert({2: ItemFeatures("Drama", 0.1, 0.1, vector(1, 2, 3))})
    with pytest.raises(InvalidArgument, match="dimension"):
        table.upsert(
            {
                3: ItemFeatures("Drama", 0.1, 0.1, vector(1)),
                4: ItemFeatures("Drama", 0.1, 0.1, vector(1, 2)),
            }
        )
    with pytest.raises(InvalidArgument, match="vector"):
        table.upsert({5: ItemFeatures("Drama", 0.1, 0.1, np.ones((2, 2), np.float32))})
    assert len(table) == 1  # a refused put changes nothing
    # Replacing every embedded item moves the table to the new dimension.
    table.upsert({1: ItemFeatures("Drama", 0.1, 0.1, vector(1, 2, 3))})
    assert table.dimension == 3


def test_category_values_map_by_code() -> None:
    table = ItemFeatureTable()
    table.upsert({1: ItemFeatures("Drama", 0.1, 0.1), 2: ItemFeatures("Action", 0.1, 0.1)})
    batch = table.lookup([2, 1, 3, 2])
    preferences = {"Drama": 0.5, "Action": 0.25, "": 0.75}
    np.testing.assert_array_equal(batch.category_values(preferences), vector(0.25, 0.5, 0.75, 0.25))
    packed = batch_from([None, ItemFeatures("Drama", 0.1, 0.1)])
    np.testing.assert_array_equal(packed.category_values({"Drama": 0.5}), vector(0, 0.5))


def test_lookup_matches_batch_from_on_a_random_catalogue() -> None:
    generator = np.random.default_rng(17)
    table = ItemFeatureTable()
    reference: dict[int, ItemFeatures] = {}
    for _ in range(4):  # several puts: new items and updates of earlier ones
        ids = generator.choice(2000, size=300, replace=False)
        items = {
            int(item): ItemFeatures(
                f"category-{generator.integers(12)}",
                float(generator.random()),
                float(generator.random()),
                generator.standard_normal(8).astype(np.float32)
                if generator.random() < 0.8
                else None,
            )
            for item in ids
        }
        table.upsert(items)
        reference.update(items)
        query = generator.integers(-10, 2100, size=1000).tolist()
        assert_same_batch(table.lookup(query), batch_from([reference.get(item) for item in query]))
    assert len(table) == len(reference)
    query_array = np.array(sorted(reference), np.int64)
    assert table.lookup(query_array).found.all()
