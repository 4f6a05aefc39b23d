"""The candidate sources as training sees them: a user's merged pool, its features and the
cross-fitted rows the ranking model learns from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.data.catalogue import Catalogue
from recsys.data.synthetic import synthetic_catalogue
from recsys.domain.candidates import CandidateMix, SourceKind
from recsys.domain.ranking import RANKING_FEATURES
from recsys.similarity.fit import NeighbourSettings
from recsys.training.candidates import (
    CandidateModels,
    cross_fitted_rows,
    fit_candidate_models,
    inner_models,
    pool_features,
    ranker_rows,
    user_pool,
)
from recsys.training.dataset import InteractionTable, random_split
from recsys.training.models import EmbeddingSettings, top_of
from recsys.training.pipeline import item_signals

SMALL = EmbeddingSettings(factors=16, regularization=5.0, iterations=5)
MIX = CandidateMix(retrieval=40, neighbours=40, popularity=15)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return synthetic_catalogue(400, 200, interactions_per_user=20, category_count=6, seed=11)


@pytest.fixture(scope="module")
def table(catalogue: Catalogue) -> InteractionTable:
    return InteractionTable.from_catalogue(catalogue)


@pytest.fixture(scope="module")
def models(catalogue: Catalogue, table: InteractionTable) -> CandidateModels:
    return fit_candidate_models(
        catalogue, table, SMALL, NeighbourSettings(), signals_of=item_signals
    )


def column(name: str) -> int:
    return RANKING_FEATURES.index(name)


def test_history_seeds_are_the_newest_ids(models: CandidateModels) -> None:
    store = models.neighbours
    history = np.array([40, 7, 19, 7, 3, 88], np.int64)

    def seeds(limit: int) -> list[int]:
        return store.item_ids[store.seed_rows(history, limit)].tolist()

    assert seeds(3) == [19, 40, 88]
    assert seeds(100) == [3, 7, 19, 40, 88]
    assert seeds(0) == []


def test_the_pool_leaves_the_history_out_but_retrieval_positions_count_it(
    models: CandidateModels,
) -> None:
    seen = models.table.items_by_user()
    item_ids = models.table.item_ids
    history_in_retrieval = 0
    for user_row in range(0, models.table.user_count, 10):
        history = item_ids[seen[user_row]]
        pool = user_pool(models, user_row, seen[user_row], MIX)
        assert len(pool) > 0
        assert not np.isin(pool.item_ids, history).any()
        # The retrieval list as the index returns it: the user's own items included.
        scores = models.embeddings.item_vectors @ models.embeddings.user_vectors[user_row]
        rows, top_scores = top_of(scores.astype(np.float32), MIX.retrieval)
        retrieved = item_ids[rows].tolist()
        history_in_retrieval += int(np.isin(retrieved, history).sum())
        retrieval = pool.columns[SourceKind.RETRIEVAL]
        for index, item in enumerate(pool.item_ids.tolist()):
            if item in retrieved:
                position = retrieved.index(item)
                assert retrieval.positions[index] == position
                assert retrieval.scores[index] == top_scores[position]
            else:
                assert retrieval.positions[index] == -1
        # Every retrieved item not in the history is in the pool.
        assert set(retrieved) - set(history.tolist()) <= set(pool.item_ids.tolist())
        popularity = pool.columns[SourceKind.POPULARITY]
        popular = models.popular_ids[: MIX.popularity].tolist()
        for index, item in enumerate(pool.item_ids.tolist()):
            expected = popular.index(item) if item in popular else -1
            assert popularity.positions[index] == expected
    # ALS puts a user's own items near the top: the merge, not retrieval, drops them.
    assert history_in_retrieval > 0


def test_the_neighbour_source_is_seeded_by_the_newest_history_items(
    models: CandidateModels,
) -> None:
    seen = models.table.items_by_user()
    item_ids = models.table.item_ids
    user_row = 3
    history = item_ids[seen[user_row]]
    assert len(history) > 4
    mix = CandidateMix(retrieval=0, neighbours=30, popularity=0)
    pool = user_pool(models, user_row, seen[user_row], mix, history_limit=4)
    expected = models.neighbours.top(np.sort(history)[-4:], 30)
    column = pool.columns[SourceKind.NEIGHBOURS]
    kept = ~np.isin(expected.item_ids, history)
    assert pool.item_ids.tolist() == expected.item_ids[kept].tolist()
    assert column.positions.tolist() == np.flatnonzero(kept).tolist()
    np.testing.assert_array_equal(column.scores, expected.scores[kept])
    assert set(pool.columns) == {SourceKind.NEIGHBOURS}
    # Seeded by the whole history, the source answers differently.
    every = user_pool(models, user_row, seen[user_row], mix)
    assert every.item_ids.tolist() != pool.item_ids.tolist()


def test_pool_features_read_the_sources(models: CandidateModels) -> None:
    seen = models.table.items_by_user()
    user_row = 17
    pool = user_pool(models, user_row, seen[user_row], MIX)
    features = pool_features(models, user_row, pool, history_size=len(seen[user_row]))
    assert features.shape == (len(pool), len(RANKING_FEATURES))
    neighbours = pool.columns[SourceKind.NEIGHBOURS]
    np.testing.assert_array_equal(features[:, column("neighbour_score")], neighbours.scores)
    for source, name in [
        (SourceKind.RETRIEVAL, "retrieval_rank_score"),
        (SourceKind.NEIGHBOURS, "neighbour_rank_score"),
        (SourceKind.POPULARITY, "popularity_rank_score"),
    ]:
        positions = pool.columns[source].positions
        expected = [1 / (1 + position) if position >= 0 else 0.0 for position in positions]
        np.testing.assert_allclose(features[:, column(name)], expected, rtol=1e-6)
        assert (positions >= 0).any()
        assert (positions < 0).any()
    np.testing.assert_allclose(
        features[:, column("user_activity")], math.log1p(len(seen[user_row])), rtol=1e-6
    )
    # The candidate score is retrieval's (0 where only another source found the item).
    np.testing.assert_array_equal(
        features[:, column("candidate_score")], pool.score_of(SourceKind.RETRIEVAL)
    )
    rows = np.searchsorted(models.table.item_ids, pool.item_ids)
    np.testing.assert_allclose(
        features[:, column("user_item_dot")],
        models.embeddings.item_vectors[rows] @ models.embeddings.user_vectors[user_row],
        rtol=1e-5,
        atol=1e-6,
    )


def test_ranker_rows_label_only_held_out_items(
    catalogue: Catalogue, table: InteractionTable
) -> None:
    kept, held = random_split(table, train_ratio=0.8, seed=5)
    models = fit_candidate_models(
        catalogue, kept, SMALL, NeighbourSettings(), signals_of=item_signals
    )
    seen, held_out = kept.items_by_user(), held.items_by_user()
    features, labels, groups = ranker_rows(models, seen, held_out, MIX)
    assert sum(groups) == len(labels) == len(features)
    expected = []
    for user_row in range(table.user_count):
        pool = user_pool(models, user_row, seen[user_row], MIX)
        label = np.isin(pool.item_ids, table.item_ids[held_out[user_row]])
        if label.any():
            expected.append(label)
    assert [len(label) for label in expected] == groups
    np.testing.assert_array_equal(labels, np.concatenate(expected).astype(np.float32))
    # The user's training items are never labelled: they are not in its pool.
    with pytest.raises(ValueError, match="no user"):
        ranker_rows(models, seen, seen, MIX)


def test_cross_fitted_rows_come_from_every_fold_and_repeat(
    catalogue: Catalogue, table: InteractionTable
) -> None:
    fit = inner_models(
        catalogue,
        table,
        SMALL,
        NeighbourSettings(),
        holdout_ratio=0.2,
        seed=1,
        signals_of=item_signals,
    )
    fitted = {fold: fit(fold) for fold in range(2)}
    for models, held_out in fitted.values():
        # Each fold's sources never saw its held-out pairs.
        seen = models.table.items_by_user()
        for user_row in range(table.user_count):
            assert not np.isin(held_out[user_row], seen[user_row]).any()
            assert len(seen[user_row]) + len(held_out[user_row]) == len(
                table.items_by_user()[user_row]
            )
    assert not np.array_equal(fitted[0][0].table.item_rows, fitted[1][0].table.item_rows)

    asked: list[int] = []

    def inner(fold: int) -> tuple[CandidateModels, list[np.ndarray]]:
        asked.append(fold)
        return fitted[fold]

    features, labels, groups = cross_fitted_rows(inner, 2, MIX, max_users=60, seed=4)
    assert asked == [0, 1]
    assert sum(groups) == len(labels) == len(features)
    parts = [
        ranker_rows(
            fitted[fold][0],
            fitted[fold][0].table.items_by_user(),
            fitted[fold][1],
            MIX,
            max_users=30,
            seed=4 + fold,
        )
        for fold in range(2)
    ]
    assert groups == parts[0][2] + parts[1][2]
    assert 0 < len(parts[0][2]) <= 30
    assert 0 < len(parts[1][2]) <= 30
    np.testing.assert_array_equal(features, np.concatenate([part[0] for part in parts]))
    np.testing.assert_array_equal(labels, np.concatenate([part[1] for part in parts]))
    # Deterministic: refitted from scratch, the same rows.
    again = cross_fitted_rows(
        inner_models(
            catalogue,
            table,
            SMALL,
            NeighbourSettings(),
            holdout_ratio=0.2,
            seed=1,
            signals_of=item_signals,
        ),
        2,
        MIX,
        max_users=60,
        seed=4,
    )
    assert again[2] == groups
    assert again[0].tobytes() == features.tobytes()
    assert again[1].tobytes() == labels.tobytes()
