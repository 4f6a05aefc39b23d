"""The one ordering rule of every ranked list: score descending, then item id ascending, with
scores compared as float32 (the precision the serving path carries them in).

Shard answers, the fan-out merge, Rank and its fallbacks, cold start, popularity lists and the
offline evaluation all order through these functions, so two paths that compute the same
float32 scores give the same list whatever order their candidates arrived in, and exact ties
(duplicate vectors, equal tree-model scores) are decided by item id instead of by chance.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def _keys(
    item_ids: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[IntArray, npt.NDArray[np.float32]]:
    ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    negated = -np.asarray(scores, dtype=np.float32).reshape(-1)
    # A score that is not a number ranks last, never hiding the others from a cut.
    negated[np.isnan(negated)] = np.inf
    if ids.shape != negated.shape:
        raise ValueError(f"{len(ids)} item ids but {len(negated)} scores")
    return ids, negated


def ranked_order(item_ids: npt.ArrayLike, scores: npt.ArrayLike) -> IntArray:
    """Positions that put the candidates in rank order."""
    ids, negated = _keys(item_ids, scores)
    order: IntArray = np.lexsort((ids, negated)).astype(np.int64, copy=False)
    return order


def top_k_order(item_ids: npt.ArrayLike, scores: npt.ArrayLike, k: int) -> IntArray:
    """The first `k` positions of `ranked_order`, without sorting every candidate. The partial
    selection keeps every candidate tied with the k-th score, so which tied item makes the cut
    is decided by item id, not by the selection algorithm."""
    ids, negated = _keys(item_ids, scores)
    if k <= 0:
        return np.empty(0, np.int64)
    if k >= len(ids):
        return ranked_order(ids, -negated)
    kth = np.partition(negated, k - 1)[k - 1]
    head = np.flatnonzero(negated <= kth)
    order: IntArray = head[np.lexsort((ids[head], negated[head]))[:k]].astype(np.int64)
    return order
