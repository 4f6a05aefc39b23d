"""Fitting item-to-item weights from a users x items interaction matrix:

- EASE^R (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): the closed form
  B = I - P diag(1 / diag(P)), P = (X^T X + lambda I)^-1, diagonal zero. Exact, dense, and
  O(items^3): used while the catalogue is at most `ease_max_items`.
- Cosine co-occurrence: C_ij / sqrt(n_i n_j) over the sparse X^T X, each item's top `per_item`
  kept; for catalogues beyond EASE^R's reach (a million items).

`build_neighbours` picks one and the store's layout (dense while it fits, top-k rows beyond).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.similarity.neighbours import ItemNeighbours

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class NeighbourSettings:
    # EASE^R's L2 regularisation (chosen on a validation split by `recsys train --tune`).
    ease_lambda: float = 250.0
    # EASE^R while the catalogue has at most this many items (a dense inverse: 8 n^2 bytes).
    ease_max_items: int = 12_000
    # A dense store while it has at most this many items (4 n^2 bytes), top-k rows beyond.
    dense_max_items: int = 5_000
    # Neighbours kept per item in the sparse layout.
    per_item: int = 100


def ease_weights(interactions: sp.csr_matrix, ease_lambda: float) -> FloatArray:
    """EASE^R's item x item weights (float32, zero diagonal) from binary interactions."""
    binary = interactions.copy()
    binary.data[:] = 1.0
    gram = (binary.T @ binary).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += ease_lambda
    inverse = np.linalg.inv(gram)
    weights = inverse / (-np.diag(inverse))
    weights[np.diag_indices_from(weights)] = 0.0
    result: FloatArray = weights.astype(np.float32)
    return result


def cooccurrence_rows(
    interactions: sp.csr_matrix, per_item: int, *, block_nonzeros: int = 20_000_000
) -> tuple[IntArray, npt.NDArray[np.int32], FloatArray]:
    """Each item's top `per_item` neighbours by cosine co-occurrence, as CSR (indptr, indices,
    weights); ties by item row. Built a block of items at a time (about `block_nonzeros`
    co-occurrences each), so memory follows the block, not the whole item x item product."""
    binary = interactions.copy().astype(np.float32)
    binary.data[:] = 1.0
    item_count = binary.shape[1]
    counts = np.asarray(binary.sum(axis=0)).ravel().astype(np.float64)
    by_item = binary.T.tocsr()  # items x users
    # Co-occurrences of item i: the sum of its users' history lengths (an upper bound).
    lengths = np.asarray(binary.sum(axis=1)).ravel()
    work = np.asarray(by_item @ lengths).ravel()
    indptr_parts = [np.zeros(1, np.int64)]
    index_parts: list[npt.NDArray[np.int32]] = []
    weight_parts: list[FloatArray] = []
    start = 0
    while start < item_count:
        # At least one item per block; as many more as fit the budget.
        budget = np.cumsum(work[start:])
        stop = start + max(1, int(np.searchsorted(budget, block_nonzeros, side="right")))
        gram = (by_item[start:stop] @ binary).tocoo()
        rows = gram.row.astype(np.int64) + start
        cols = gram.col.astype(np.int64)
        keep = rows != cols
        rows, cols = rows[keep], cols[keep]
        norms = np.sqrt(counts[rows] * counts[cols])
        values = (gram.data[keep] / np.maximum(norms, 1e-12)).astype(np.float32)
        indptr, indices, weights = top_per_row(rows - start, cols, values, stop - start, per_item)
        indptr_parts.append(indptr[1:] + indptr_parts[-1][-1])
        index_parts.append(indices)
        weight_parts.append(weights)
        start = stop
    return (
        np.concatenate(indptr_parts),
        np.concatenate(index_parts) if index_parts else np.empty(0, np.int32),
        np.concatenate(weight_parts) if weight_parts else np.empty(0, np.float32),
    )


def top_per_row(
    rows: IntArray, cols: IntArray, values: FloatArray, row_count: int, per_item: int
) -> tuple[IntArray, npt.NDArray[np.int32], FloatArray]:
    """CSR of the `per_item` highest values of each row (ties by column), from COO triples."""
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, rows, side="left")
    keep = (np.arange(len(rows)) - starts) < per_item
    rows, cols, values = rows[keep], cols[keep], values[keep]
    indptr = np.zeros(row_count + 1, np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), cols.astype(np.int32), values.astype(np.float32)


def dense_to_rows(
    weights: FloatArray, per_item: int
) -> tuple[IntArray, npt.NDArray[np.int32], FloatArray]:
    """The top `per_item` positive weights of each row of a dense matrix, as CSR."""
    count = weights.shape[0]
    per_item = min(per_item, max(1, count - 1))
    # Columns of each row's per_item largest, then ordered (value desc, column asc).
    head = np.argpartition(-weights, per_item - 1, axis=1)[:, :per_item]
    rows = np.repeat(np.arange(count, dtype=np.int64), per_item)
    cols = head.reshape(-1).astype(np.int64)
    values = weights[rows, cols]
    positive = values > 0
    return top_per_row(rows[positive], cols[positive], values[positive], count, per_item)


def build_neighbours(
    interactions: sp.csr_matrix, item_ids: IntArray, settings: NeighbourSettings
) -> ItemNeighbours:
    """The store for a catalogue: EASE^R while it is small enough to invert, co-occurrence
    beyond; dense while it fits, top-k rows beyond."""
    count = interactions.shape[1]
    if count != len(item_ids):
        raise ValueError(f"{count} matrix columns for {len(item_ids)} item ids")
    ids = np.asarray(item_ids, dtype=np.int64)
    if count <= settings.ease_max_items:
        weights = ease_weights(interactions, settings.ease_lambda)
        parameters = {"ease_lambda": settings.ease_lambda}
        if count <= settings.dense_max_items:
            return ItemNeighbours(ids, "ease", dense=weights, parameters=parameters)
        indptr, indices, values = dense_to_rows(weights, settings.per_item)
        return ItemNeighbours(
            ids,
            "ease",
            indptr=indptr,
            indices=indices,
            weights=values,
            parameters={**parameters, "per_item": settings.per_item},
        )
    indptr, indices, values = cooccurrence_rows(interactions, settings.per_item)
    return ItemNeighbours(
        ids,
        "cooccurrence",
        indptr=indptr,
        indices=indices,
        weights=values,
        parameters={"per_item": settings.per_item},
    )
