"""The item-to-item neighbour store: for each item, the items that go with it and how much
(EASE^R weights, or cosine co-occurrence on catalogues too large for EASE^R), built by
`recsys train` and served by the neighbours candidate source.

Sized for the catalogue: a dense item x item matrix while it fits (`dense_max_items`; the
neighbour score is then exactly EASE^R's), the top `per_item` neighbours of each item as sparse
rows otherwise. A user's neighbour score for an item is the sum of the weights from the items
of their history to it (Steck 2019: `x_u . B`); the top of those, history left out, are the
source's candidates.

One function scores (`top`), used by the Recommend source, the ranker's training rows and the
offline evaluation; history is sorted first and sums run in float64, so the same history gives
the same float32 scores on every path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.domain.candidates import SourceKind, SourceList
from recsys.domain.ordering import top_k_order

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ItemNeighbours:
    # The catalogue's item ids, ascending: row and column i is item_ids[i].
    item_ids: IntArray
    # "ease" (EASE^R weights) or "cooccurrence" (cosine of co-occurrence counts).
    method: str
    # Dense weights (items x items; row: history item, column: candidate), or None.
    dense: FloatArray | None = None
    # Sparse rows (CSR over item rows): each item's top neighbours and weights.
    indptr: IntArray | None = None
    indices: npt.NDArray[np.int32] | None = None
    weights: FloatArray | None = None
    # How it was built (lambda, per_item...), for reports and `recsys index info`-style output.
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.dense is None) == (self.indptr is None):
            raise ValueError("item neighbours are either dense or sparse rows")

    @property
    def item_count(self) -> int:
        return len(self.item_ids)

    @property
    def nbytes(self) -> int:
        parts = [self.item_ids, self.dense, self.indptr, self.indices, self.weights]
        return sum(part.nbytes for part in parts if part is not None)

    def rows_of(self, item_ids: Iterable[int]) -> IntArray:
        """Rows of the known items among `item_ids`, ascending and unique (unknown ones are
        left out: items added after training have no neighbours yet)."""
        ids = np.unique(np.fromiter(item_ids, dtype=np.int64))
        if not len(ids) or not len(self.item_ids):
            return np.empty(0, np.int64)
        where = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
        rows: IntArray = where[self.item_ids[where] == ids].astype(np.int64)
        return rows

    def seed_rows(self, history_item_ids: Iterable[int], limit: int | None = None) -> IntArray:
        """The rows of the history items that seed the scores: those the store knows, the last
        `limit` by item id (ids grow with time in most catalogues, and the history is read as
        a set); every known one without a limit."""
        rows = self.rows_of(history_item_ids)
        if limit is None:
            return rows
        return rows[-limit:] if limit > 0 else rows[:0]

    def scores_of_rows(self, history_rows: IntArray) -> tuple[IntArray, FloatArray]:
        """Item rows with a score from `history_rows` (every row when dense) and the scores."""
        if self.dense is not None:
            total = self.dense[history_rows].sum(axis=0, dtype=np.float64)
            return np.arange(self.item_count, dtype=np.int64), total.astype(np.float32)
        assert self.indptr is not None
        assert self.indices is not None
        assert self.weights is not None
        starts, ends = self.indptr[history_rows], self.indptr[history_rows + 1]
        lengths = ends - starts
        if not lengths.sum():
            return np.empty(0, np.int64), np.empty(0, np.float32)
        # Positions of every history row's neighbours, in history then neighbour order.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        positions = np.arange(int(lengths.sum()), dtype=np.int64) + offsets
        rows, inverse = np.unique(self.indices[positions], return_inverse=True)
        sums = np.bincount(inverse, weights=self.weights[positions].astype(np.float64))
        return rows.astype(np.int64), sums.astype(np.float32)

    def top(
        self, history_item_ids: Iterable[int], count: int, *, history_limit: int | None = None
    ) -> SourceList:
        """The `count` items with the highest positive neighbour score from the history (its
        own items left out), best first; ties by item id. `history_limit`: only the last that
        many of the history's items the store knows, by item id, seed the scores (items added
        since training have no neighbours and take no seed's place)."""
        history_rows = self.seed_rows(history_item_ids, history_limit)
        if not len(history_rows) or count <= 0:
            return SourceList.of(SourceKind.NEIGHBOURS, [], [])
        rows, scores = self.scores_of_rows(history_rows)
        keep = (scores > 0) & ~np.isin(rows, history_rows)
        rows, scores = rows[keep], scores[keep]
        ids = self.item_ids[rows]
        head = top_k_order(ids, scores, count)
        return SourceList(SourceKind.NEIGHBOURS, ids[head], scores[head])


def save_neighbours(path: Path, neighbours: ItemNeighbours) -> None:
    """One .npz (uncompressed: loading is a read), written through a temporary name."""
    arrays: dict[str, Any] = {
        "item_ids": neighbours.item_ids,
        "meta": np.array(
            json.dumps(
                {
                    "format_version": FORMAT_VERSION,
                    "method": neighbours.method,
                    "parameters": dict(neighbours.parameters),
                },
                sort_keys=True,
            )
        ),
    }
    if neighbours.dense is not None:
        arrays["dense"] = neighbours.dense
    else:
        arrays.update(
            indptr=neighbours.indptr, indices=neighbours.indices, weights=neighbours.weights
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as output:
        np.savez(output, **arrays)
    partial.replace(path)


def load_neighbours(path: Path) -> ItemNeighbours:
    """ValueError when the file is not a neighbour store of a format this code reads."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: neighbour store format {meta.get('format_version')}")
        item_ids = np.asarray(data["item_ids"], dtype=np.int64)
        if "dense" in data:
            return ItemNeighbours(
                item_ids,
                meta["method"],
                dense=np.asarray(data["dense"], dtype=np.float32),
                parameters=meta["parameters"],
            )
        return ItemNeighbours(
            item_ids,
            meta["method"],
            indptr=np.asarray(data["indptr"], dtype=np.int64),
            indices=np.asarray(data["indices"], dtype=np.int32),
            weights=np.asarray(data["weights"], dtype=np.float32),
            parameters=meta["parameters"],
        )
