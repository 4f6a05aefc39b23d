"""Merging the candidate sources: one row per item, sources in MERGE_ORDER, and what every
source said about every merged item."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.domain.candidates import (
    MERGE_ORDER,
    CandidateMix,
    MergedCandidates,
    SourceKind,
    SourceList,
    merge_sources,
    select_candidates,
)

RETRIEVAL = SourceList.of(SourceKind.RETRIEVAL, [10, 20, 30], [0.9, 0.8, 0.7])
NEIGHBOURS = SourceList.of(SourceKind.NEIGHBOURS, [30, 40, 10], [5.0, 4.0, 3.0])
POPULARITY = SourceList.of(SourceKind.POPULARITY, [50, 20], [1.0, 0.5])


def columns_as_lists(merged: MergedCandidates) -> dict[SourceKind, tuple[list[float], list[int]]]:
    return {
        source: (column.scores.tolist(), column.positions.tolist())
        for source, column in merged.columns.items()
    }


def test_the_merge_follows_merge_order_whatever_order_the_lists_come_in() -> None:
    assert MERGE_ORDER == (SourceKind.RETRIEVAL, SourceKind.NEIGHBOURS, SourceKind.POPULARITY)
    results = [
        merge_sources(list(order))
        for order in itertools.permutations([RETRIEVAL, NEIGHBOURS, POPULARITY])
    ]
    first = results[0]
    assert first.item_ids.tolist() == [10, 20, 30, 40, 50]
    assert first.first_sources == (
        SourceKind.RETRIEVAL,
        SourceKind.RETRIEVAL,
        SourceKind.RETRIEVAL,
        SourceKind.NEIGHBOURS,
        SourceKind.POPULARITY,
    )
    for other in results[1:]:
        assert other.item_ids.tolist() == first.item_ids.tolist()
        assert other.first_sources == first.first_sources
        assert columns_as_lists(other) == columns_as_lists(first)


def test_every_source_column_holds_its_own_position_and_score() -> None:
    merged = merge_sources([POPULARITY, NEIGHBOURS, RETRIEVAL])
    # Items 10, 20, 30, 40, 50.
    retrieval = merged.columns[SourceKind.RETRIEVAL]
    neighbours = merged.columns[SourceKind.NEIGHBOURS]
    popularity = merged.columns[SourceKind.POPULARITY]
    np.testing.assert_allclose(retrieval.scores, [0.9, 0.8, 0.7, 0, 0], rtol=1e-6)
    assert retrieval.positions.tolist() == [0, 1, 2, -1, -1]
    # 10 and 30 were found by retrieval and neighbours: both columns filled.
    np.testing.assert_allclose(neighbours.scores, [3.0, 0, 5.0, 4.0, 0])
    assert neighbours.positions.tolist() == [2, -1, 0, 1, -1]
    np.testing.assert_allclose(popularity.scores, [0, 0.5, 0, 0, 1.0])
    assert popularity.positions.tolist() == [-1, 1, -1, -1, 0]
    assert neighbours.found.tolist() == [True, False, True, True, False]
    np.testing.assert_array_equal(merged.score_of(SourceKind.NEIGHBOURS), neighbours.scores)
    assert retrieval.scores.dtype == np.float32
    assert retrieval.positions.dtype == np.int64


def test_a_source_that_did_not_answer_scores_zero() -> None:
    merged = merge_sources([RETRIEVAL])
    assert set(merged.columns) == {SourceKind.RETRIEVAL}
    assert merged.score_of(SourceKind.POPULARITY).tolist() == [0.0, 0.0, 0.0]
    assert merged.score_of(SourceKind.POPULARITY).dtype == np.float32


def test_excluded_items_are_left_out_with_their_columns() -> None:
    merged = merge_sources([RETRIEVAL, NEIGHBOURS, POPULARITY], excluded=[10, 50, 999])
    assert merged.item_ids.tolist() == [20, 30, 40]
    assert len(merged) == 3
    assert merged.first_sources == (
        SourceKind.RETRIEVAL,
        SourceKind.RETRIEVAL,
        SourceKind.NEIGHBOURS,
    )
    assert merged.columns[SourceKind.NEIGHBOURS].positions.tolist() == [-1, 0, 1]
    assert merged.columns[SourceKind.POPULARITY].positions.tolist() == [1, -1, -1]
    # An empty exclusion changes nothing.
    assert merge_sources([RETRIEVAL], excluded=[]).item_ids.tolist() == [10, 20, 30]
    # Everything excluded.
    assert len(merge_sources([RETRIEVAL], excluded=[10, 20, 30])) == 0


def test_an_item_listed_twice_by_a_source_keeps_its_first_placement() -> None:
    repeated = SourceList.of(SourceKind.NEIGHBOURS, [7, 8, 7, 9], [4.0, 3.0, 2.0, 1.0])
    merged = merge_sources([repeated])
    assert merged.item_ids.tolist() == [7, 8, 9]
    column = merged.columns[SourceKind.NEIGHBOURS]
    assert column.positions.tolist() == [0, 1, 3]
    np.testing.assert_allclose(column.scores, [4.0, 3.0, 1.0])
    # And when another source found it first.
    both = merge_sources([repeated, SourceList.of(SourceKind.RETRIEVAL, [9, 7], [0.5, 0.4])])
    assert both.item_ids.tolist() == [9, 7, 8]
    assert both.columns[SourceKind.NEIGHBOURS].positions.tolist() == [3, 0, 1]


def test_a_source_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        merge_sources([RETRIEVAL, SourceList.of(SourceKind.RETRIEVAL, [1])])


def test_no_sources_give_no_candidates() -> None:
    merged = merge_sources([])
    assert len(merged) == 0
    assert merged.item_ids.dtype == np.int64
    assert merged.first_sources == ()
    assert merged.score_of(SourceKind.RETRIEVAL).tolist() == []
    empty_list = merge_sources([SourceList.of(SourceKind.RETRIEVAL, [])])
    assert len(empty_list) == 0
    assert empty_list.columns[SourceKind.RETRIEVAL].positions.tolist() == []


def test_source_list_without_scores_descends_from_one() -> None:
    listing = SourceList.of(SourceKind.POPULARITY, [5, 3, 9, 1])
    assert listing.item_ids.dtype == np.int64
    assert listing.scores.dtype == np.float32
    np.testing.assert_allclose(listing.scores, [1.0, 0.75, 0.5, 0.25])
    assert SourceList.of(SourceKind.POPULARITY, []).scores.tolist() == []
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        SourceList.of(SourceKind.RETRIEVAL, [1, 2], [0.5])


def test_select_candidates_takes_rows_and_their_columns_in_order() -> None:
    merged = merge_sources([RETRIEVAL, NEIGHBOURS, POPULARITY])
    chosen = select_candidates(merged, np.array([4, 0, 2], np.int64))
    assert chosen.item_ids.tolist() == [50, 10, 30]
    assert chosen.first_sources == (
        SourceKind.POPULARITY,
        SourceKind.RETRIEVAL,
        SourceKind.RETRIEVAL,
    )
    assert chosen.columns[SourceKind.NEIGHBOURS].positions.tolist() == [-1, 2, 0]
    np.testing.assert_allclose(chosen.columns[SourceKind.RETRIEVAL].scores, [0, 0.9, 0.7])
    assert len(select_candidates(merged, np.empty(0, np.int64))) == 0


def test_candidate_mix_counts_per_source() -> None:
    mix = CandidateMix(retrieval=5, neighbours=6, popularity=7)
    assert [mix.count(source) for source in MERGE_ORDER] == [5, 6, 7]


ids = st.lists(st.integers(min_value=0, max_value=30), max_size=15)


@settings(max_examples=200, deadline=None)
@given(
    retrieval=ids,
    neighbours=ids,
    popularity=ids,
    excluded=ids,
    order=st.permutations([0, 1, 2]),
)
def test_merged_ids_are_the_unique_union_less_excluded_in_first_appearance_order(
    retrieval: list[int],
    neighbours: list[int],
    popularity: list[int],
    excluded: list[int],
    order: list[int],
) -> None:
    lists = [
        SourceList.of(SourceKind.RETRIEVAL, retrieval),
        SourceList.of(SourceKind.NEIGHBOURS, neighbours),
        SourceList.of(SourceKind.POPULARITY, popularity),
    ]
    merged = merge_sources([lists[index] for index in order], excluded=excluded)
    expected: list[int] = []
    for item in retrieval + neighbours + popularity:
        if item not in expected and item not in excluded:
            expected.append(item)
    assert merged.item_ids.tolist() == expected
    for source, listing in zip(MERGE_ORDER, (retrieval, neighbours, popularity), strict=True):
        column = merged.columns[source]
        for row, item in enumerate(expected):
            position = listing.index(item) if item in listing else -1
            assert column.positions[row] == position
            expected_score = 1.0 - position / max(1, len(listing)) if position >= 0 else 0.0
            assert column.scores[row] == pytest.approx(expected_score, abs=1e-6)
    for row, item in enumerate(expected):
        first = next(
            source
            for source, listing in zip(
                MERGE_ORDER, (retrieval, neighbours, popularity), strict=True
            )
            if item in listing
        )
        assert merged.first_sources[row] == first
