"""Top-k metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from recsys.evaluation.metrics import evaluate_lists, intra_list_diversity


def test_a_perfect_list_scores_one() -> None:
    metrics = evaluate_lists(
        {"u": [1, 2, 3]}, {"u": {1, 2, 3}}, category_of={}, catalogue_size=10, k=3
    )
    assert metrics.precision == metrics.recall == metrics.ndcg == metrics.map == 1.0
    assert metrics.coverage == pytest.approx(0.3)


def test_hand_computed_values() -> None:
    # Hits at ranks 2 and 4 of 4; three relevant items.
    metrics = evaluate_lists(
        {"u": [9, 1, 8, 2]}, {"u": {1, 2, 3}}, category_of={}, catalogue_size=100, k=4
    )
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.precision == pytest.approx(2 / 4)
    assert metrics.recall == pytest.approx(2 / 3)
    assert metrics.ndcg == pytest.approx(dcg / ideal)
    assert metrics.map == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_only_the_first_k_count_and_users_without_relevant_items_are_left_out() -> None:
    metrics = evaluate_lists(
        {"u": [5, 1], "v": [1]},
        {"u": {1}, "v": set(), "w": {7}},
        category_of={},
        catalogue_size=10,
        k=1,
    )
    assert metrics.users == 2  # u and w; w has no list and scores 0
    assert metrics.precision == 0.0
    assert metrics.coverage == pytest.approx(0.1)  # only item 5 counts for u at k=1


def test_intra_list_diversity_is_the_share_of_pairs_across_categories() -> None:
    categories = {1: ("a",), 2: ("a",), 3: ("b",)}
    assert intra_list_diversity([1, 2, 3], categories) == pytest.approx(2 / 3)
    assert intra_list_diversity([1, 2], categories) == 0.0
    assert intra_list_diversity([1], categories) == 0.0


def test_a_pair_sharing_any_category_is_similar() -> None:
    # Crime|Drama and Drama|Romance share Drama; Crime|Drama and Comedy share nothing.
    categories = {
        1: ("Crime", "Drama"),
        2: frozenset({"Drama", "Romance"}),
        3: ("Comedy",),
        4: ("Comedy", "Crime"),
    }
    assert intra_list_diversity([1, 2], categories) == 0.0
    assert intra_list_diversity([1, 3], categories) == 1.0
    # Pairs: 1-2 share, 1-3 differ, 1-4 share, 2-3 differ, 2-4 differ, 3-4 share.
    assert intra_list_diversity([1, 2, 3, 4], categories) == pytest.approx(3 / 6)
    # Items without categories count as one category of their own: similar to each other.
    assert intra_list_diversity([8, 9, 3], categories) == pytest.approx(2 / 3)
    metrics = evaluate_lists({"u": [1, 2, 3]}, {"u": {1}}, category_of=categories,
                             catalogue_size=4, k=3)  # fmt: skip
    assert metrics.diversity == pytest.approx(2 / 3)


def test_a_plain_string_is_not_taken_for_categories() -> None:
    with pytest.raises(TypeError, match="collection"):
        intra_list_diversity([1, 2], {1: "ab", 2: "b"})


def test_no_relevant_user_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="no user"):
        evaluate_lists({}, {"u": set()}, category_of={}, catalogue_size=1)
