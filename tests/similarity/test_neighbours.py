"""The item-to-item neighbour store: EASE^R's closed form, cosine co-occurrence, the top-k
layout, scoring a history, and the file it is saved to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.domain.candidates import SourceKind
from recsys.similarity.fit import (
    NeighbourSettings,
    build_neighbours,
    cooccurrence_rows,
    dense_to_rows,
    ease_weights,
)
from recsys.similarity.neighbours import (
    FORMAT_VERSION,
    ItemNeighbours,
    load_neighbours,
    save_neighbours,
)

LAMBDA = 3.0


def random_interactions(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < density).astype(np.float32)
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def matrix() -> sp.csr_matrix:
    return random_interactions(60, 25, 0.2, seed=1)


@pytest.fixture(scope="module")
def item_ids() -> np.ndarray:
    # Ascending but not the row numbers, so ids and rows cannot be confused.
    return np.arange(25, dtype=np.int64) * 7 + 100


def steck(matrix: sp.csr_matrix, ease_lambda: float) -> np.ndarray:
    """Steck 2019, as written: B = I - P diag(1 / diag(P)), P = (X^T X + lambda I)^-1."""
    x = (matrix.toarray() > 0).astype(np.float64)
    p = np.linalg.inv(x.T @ x + ease_lambda * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))
    np.fill_diagonal(b, 0.0)
    result: np.ndarray = b
    return result


def brute_force_top(
    weights: np.ndarray, item_ids: np.ndarray, history: list[int], count: int
) -> tuple[list[int], np.ndarray]:
    """x_u . B over the known history items, history left out, positive only, ranked by score
    then item id."""
    rows = sorted({int(np.searchsorted(item_ids, item)) for item in history if item in item_ids})
    totals = weights[rows].astype(np.float64).sum(axis=0)
    candidates = [
        (-float(np.float32(totals[row])), int(item_ids[row]), row)
        for row in range(len(item_ids))
        if row not in rows and np.float32(totals[row]) > 0
    ]
    candidates.sort()
    head = candidates[:count]
    return [item for _, item, _ in head], np.array([-score for score, _, _ in head], np.float32)


def test_ease_weights_follow_stecks_closed_form(matrix: sp.csr_matrix) -> None:
    weights = ease_weights(matrix, LAMBDA)
    assert weights.dtype == np.float32
    assert weights.shape == (25, 25)
    assert not np.diag(weights).any()
    np.testing.assert_allclose(weights, steck(matrix, LAMBDA), rtol=1e-4, atol=1e-6)
    # Counts are binarised: repeated interactions weigh as one.
    counted = matrix.copy()
    counted.data[:] = 3.0
    np.testing.assert_array_equal(ease_weights(counted, LAMBDA), weights)


def test_ease_weights_minimise_the_regularised_reconstruction(matrix: sp.csr_matrix) -> None:
    """The gradient of ||X - XB||^2 + lambda ||B||^2 is 2((G + lambda I) B - G), G = X^T X;
    under diag(B) = 0 it must vanish off the diagonal (the diagonal holds the multipliers)."""
    x = matrix.toarray().astype(np.float64)
    gram = x.T @ x
    weights = ease_weights(matrix, LAMBDA).astype(np.float64)
    gradient = (gram + LAMBDA * np.eye(len(gram))) @ weights - gram
    off_diagonal = gradient[~np.eye(len(gram), dtype=bool)]
    assert np.abs(off_diagonal).max() < 1e-4 * np.abs(gram).max()
    # And a small perturbation of an off-diagonal weight only makes the objective worse.

    def objective(b: np.ndarray) -> float:
        return float(((x - x @ b) ** 2).sum() + LAMBDA * (b**2).sum())

    best = objective(weights)
    for row, col in [(0, 1), (3, 7), (10, 2)]:
        for step in (1e-3, -1e-3):
            moved = weights.copy()
            moved[row, col] += step
            assert objective(moved) > best


def test_dense_top_equals_a_brute_force_over_the_history(
    matrix: sp.csr_matrix, item_ids: np.ndarray
) -> None:
    weights = ease_weights(matrix, LAMBDA)
    store = ItemNeighbours(item_ids, "ease", dense=weights)
    rng = np.random.default_rng(5)
    for _ in range(20):
        history = rng.choice(item_ids, size=int(rng.integers(1, 8)), replace=False).tolist()
        count = int(rng.integers(1, 30))
        listing = store.top(history, count)
        expected_ids, expected_scores = brute_force_top(weights, item_ids, history, count)
        assert listing.source is SourceKind.NEIGHBOURS
        assert listing.item_ids.tolist() == expected_ids
        np.testing.assert_allclose(listing.scores, expected_scores, rtol=1e-6)
        assert (listing.scores > 0).all()
        assert not set(listing.item_ids.tolist()) & set(history)


def test_ties_are_broken_by_item_id() -> None:
    item_ids = np.array([5, 6, 7, 8], np.int64)
    weights = np.array([[0, 0.5, 0.5, 0.5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    store = ItemNeighbours(item_ids, "ease", dense=weights)
    assert store.top([5], 2).item_ids.tolist() == [6, 7]
    assert store.top([5], 10).item_ids.tolist() == [6, 7, 8]


def test_top_ignores_unknown_history_ids_and_the_history_order(
    matrix: sp.csr_matrix, item_ids: np.ndarray
) -> None:
    weights = ease_weights(matrix, LAMBDA)
    indptr, indices, values = dense_to_rows(weights, 6)
    stores = [
        ItemNeighbours(item_ids, "ease", dense=weights),
        ItemNeighbours(item_ids, "ease", indptr=indptr, indices=indices, weights=values),
    ]
    history = [int(item_ids[3]), int(item_ids[17]), int(item_ids[9]), int(item_ids[0])]
    for store in stores:
        reference = store.top(history, 10)
        assert len(reference.item_ids) > 0
        variants: list[list[int] | np.ndarray] = [
            history[::-1],
            [history[2], history[0], history[3], history[1]],
            history + history[:2],
            [1, *history, 99_999, 101],  # not catalogue ids
            np.array(history, np.int64),
        ]
        for variant in variants:
            listing = store.top(variant, 10)
            assert listing.item_ids.tolist() == reference.item_ids.tolist()
            assert listing.scores.tobytes() == reference.scores.tobytes()
        assert store.top([1, 99_999], 10).item_ids.tolist() == []
        assert store.top([], 10).item_ids.tolist() == []
        assert store.top(history, 0).item_ids.tolist() == []
        assert store.rows_of(
            [int(item_ids[4]), 3, int(item_ids[1]), int(item_ids[4])]
        ).tolist() == [
            1,
            4,
        ]


def test_sparse_rows_keep_each_items_largest_positive_weights(
    matrix: sp.csr_matrix, item_ids: np.ndarray
) -> None:
    weights = ease_weights(matrix, LAMBDA)
    per_item = 4
    indptr, indices, values = dense_to_rows(weights, per_item)
    assert indptr.shape == (26,)
    for row in range(25):
        kept = indices[indptr[row] : indptr[row + 1]].tolist()
        positive = [(-float(weights[row, col]), col) for col in range(25) if weights[row, col] > 0]
        expected = [col for _, col in sorted(positive)[:per_item]]
        assert kept == expected
        np.testing.assert_array_equal(values[indptr[row] : indptr[row + 1]], weights[row, expected])
    # The sparse store scores a history with the kept weights only.
    store = ItemNeighbours(item_ids, "ease", indptr=indptr, indices=indices, weights=values)
    pruned = np.zeros_like(weights)
    for row in range(25):
        span = slice(indptr[row], indptr[row + 1])
        pruned[row, indices[span]] = values[span]
    history = [int(item_ids[2]), int(item_ids[11]), int(item_ids[20])]
    listing = store.top(history, 8)
    expected_ids, expected_scores = brute_force_top(pruned, item_ids, history, 8)
    assert listing.item_ids.tolist() == expected_ids
    np.testing.assert_allclose(listing.scores, expected_scores, rtol=1e-6)


def test_cooccurrence_rows_are_the_top_cosines() -> None:
    interactions = random_interactions(40, 15, 0.25, seed=4)
    per_item = 5
    indptr, indices, values = cooccurrence_rows(interactions, per_item)
    x = interactions.toarray().astype(np.float64)
    together = x.T @ x
    counts = x.sum(axis=0)
    for row in range(15):
        candidates = []
        for col in range(15):
            if col != row and together[row, col] > 0:
                cosine = np.float32(together[row, col] / np.sqrt(counts[row] * counts[col]))
                candidates.append((-cosine, col))
        expected = sorted(candidates)[:per_item]
        span = slice(indptr[row], indptr[row + 1])
        assert indices[span].tolist() == [col for _, col in expected]
        np.testing.assert_allclose(values[span], [-value for value, _ in expected], rtol=1e-6)


def test_build_neighbours_picks_the_method_and_layout_by_size(
    matrix: sp.csr_matrix, item_ids: np.ndarray
) -> None:
    dense = build_neighbours(
        matrix,
        item_ids,
        NeighbourSettings(ease_lambda=LAMBDA, ease_max_items=25, dense_max_items=25),
    )
    assert (dense.method, dense.dense is not None) == ("ease", True)
    assert dense.parameters == {"ease_lambda": LAMBDA}
    np.testing.assert_array_equal(dense.dense, ease_weights(matrix, LAMBDA))

    rows = build_neighbours(
        matrix,
        item_ids,
        NeighbourSettings(ease_lambda=LAMBDA, ease_max_items=25, dense_max_items=24, per_item=3),
    )
    assert (rows.method, rows.dense is None) == ("ease", True)
    assert rows.parameters == {"ease_lambda": LAMBDA, "per_item": 3}
    expected = dense_to_rows(ease_weights(matrix, LAMBDA), 3)
    for got, want in zip((rows.indptr, rows.indices, rows.weights), expected, strict=True):
        np.testing.assert_array_equal(got, want)

    cooccurrence = build_neighbours(
        matrix, item_ids, NeighbourSettings(ease_max_items=24, dense_max_items=100, per_item=3)
    )
    assert (cooccurrence.method, cooccurrence.dense is None) == ("cooccurrence", True)
    expected = cooccurrence_rows(matrix, 3)
    for got, want in zip(
        (cooccurrence.indptr, cooccurrence.indices, cooccurrence.weights), expected, strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert cooccurrence.item_ids.tolist() == item_ids.tolist()

    with pytest.raises(ValueError, match="24 item ids"):
        build_neighbours(matrix, item_ids[:24], NeighbourSettings())


def test_a_store_is_dense_or_sparse() -> None:
    ids = np.array([1, 2], np.int64)
    with pytest.raises(ValueError, match="dense or sparse"):
        ItemNeighbours(ids, "ease")
    with pytest.raises(ValueError, match="dense or sparse"):
        ItemNeighbours(
            ids,
            "ease",
            dense=np.zeros((2, 2), np.float32),
            indptr=np.zeros(3, np.int64),
            indices=np.zeros(0, np.int32),
            weights=np.zeros(0, np.float32),
        )


def test_save_and_load_round_trip(
    matrix: sp.csr_matrix, item_ids: np.ndarray, tmp_path: Path
) -> None:
    for name, settings in [
        ("dense", NeighbourSettings(ease_lambda=LAMBDA)),
        ("rows", NeighbourSettings(ease_lambda=LAMBDA, dense_max_items=10, per_item=4)),
        ("cooccurrence", NeighbourSettings(ease_max_items=10, per_item=4)),
    ]:
        store = build_neighbours(matrix, item_ids, settings)
        path = tmp_path / name / "item_neighbours.npz"
        save_neighbours(path, store)
        assert not path.with_name(path.name + ".partial").exists()
        loaded = load_neighbours(path)
        assert loaded.method == store.method
        assert dict(loaded.parameters) == dict(store.parameters)
        assert loaded.item_ids.tolist() == store.item_ids.tolist()
        for part in ("dense", "indptr", "indices", "weights"):
            got, want = getattr(loaded, part), getattr(store, part)
            if want is None:
                assert got is None
            else:
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)
        history = item_ids[[1, 5, 8]].tolist()
        assert loaded.top(history, 10).item_ids.tolist() == store.top(history, 10).item_ids.tolist()
        assert loaded.nbytes == store.nbytes


def test_a_store_of_another_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "item_neighbours.npz"
    meta = {"format_version": FORMAT_VERSION + 1, "method": "ease", "parameters": {}}
    np.savez(
        path,
        item_ids=np.array([1, 2], np.int64),
        meta=np.array(json.dumps(meta)),
        dense=np.zeros((2, 2), np.float32),
    )
    with pytest.raises(ValueError, match="format"):
        load_neighbours(path)
