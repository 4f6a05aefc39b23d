"""The ordering rule: score descending (as float32), then item id ascending."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from recsys.domain.ordering import ranked_order, top_k_order


def test_ties_go_to_the_lower_item_id_whatever_the_input_order() -> None:
    ids = np.array([9, 4, 7, 1, 3], np.int64)
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.9], np.float32)
    assert ids[ranked_order(ids, scores)].tolist() == [3, 4, 1, 7, 9]
    reversed_order = ranked_order(ids[::-1], scores[::-1])
    assert ids[::-1][reversed_order].tolist() == [3, 4, 1, 7, 9]


def test_scores_are_compared_as_float32() -> None:
    # Distinct as float64, equal once carried as float32 (as the serving path carries them).
    ids = np.array([2, 1], np.int64)
    scores = np.array([0.1 + 1e-12, 0.1], np.float64)
    assert ids[ranked_order(ids, scores)].tolist() == [1, 2]


def test_the_cut_off_keeps_the_lowest_ids_of_a_tied_group() -> None:
    ids = np.arange(10, dtype=np.int64)[::-1].copy()
    scores = np.array([1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.2, 0.2, 0.1], np.float32)
    top = top_k_order(ids, scores, 3)
    assert ids[top].tolist() == [9, 3, 4]
    assert top_k_order(ids, scores, 0).tolist() == []
    assert len(top_k_order(ids, scores, 50)) == 10


@given(
    st.lists(st.integers(0, 5), min_size=0, max_size=60),
    st.integers(0, 70),
    st.randoms(use_true_random=False),
)
def test_top_k_is_the_head_of_the_full_order(levels: list[int], k: int, random) -> None:  # type: ignore[no-untyped-def]
    ids = np.array(random.sample(range(1000), len(levels)), np.int64)
    scores = np.array(levels, np.float32) / 4  # few levels: many ties
    full = ranked_order(ids, scores)
    assert top_k_order(ids, scores, k).tolist() == full[:k].tolist()
    ranked_ids, ranked_scores = ids[full], scores[full]
    assert np.all(
        (ranked_scores[:-1] > ranked_scores[1:])
        | ((ranked_scores[:-1] == ranked_scores[1:]) & (ranked_ids[:-1] < ranked_ids[1:]))
    )


def test_a_score_that_is_not_a_number_ranks_last_and_hides_nothing() -> None:
    ids = np.array([1, 2, 3], np.int64)
    scores = np.array([1.0, np.nan, np.nan], np.float32)
    assert top_k_order(ids, scores, 2).tolist() == [0, 1]
    assert ranked_order(ids, scores).tolist() == [0, 1, 2]
