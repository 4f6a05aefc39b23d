"""Several candidate sources merged before ranking (the way a production mixer works).

Each source gives its candidates in its own rank order with its own scores. The merge keeps one
row per item, in source order then each source's order, and records for every source where it
placed the item and what score it gave (0 and position -1 where it did not find it): the
ranking model reads those as features (`SOURCE_FEATURES` in `recsys.domain.ranking`).

The Recommend pipeline, the ranker's training rows and the offline evaluation all merge through
`merge_sources`, so the ranking model sees the same features in training as in serving.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class SourceKind(enum.Enum):
    """A candidate source whose placement is a ranking feature, in merge order."""

    # ANN search of the user's embedding in the index shards.
    RETRIEVAL = "retrieval"
    # Item-to-item neighbours of the user's history (EASE^R weights or co-occurrence).
    NEIGHBOURS = "neighbours"
    # The most popular items (trending when the counters hold events).
    POPULARITY = "popularity"


# The order sources are merged in: an item found by several keeps the first one's reason.
MERGE_ORDER: tuple[SourceKind, ...] = (
    SourceKind.RETRIEVAL,
    SourceKind.NEIGHBOURS,
    SourceKind.POPULARITY,
)


@dataclass(frozen=True)
class SourceList:
    """One source's answer: items in its rank order and their scores."""

    source: SourceKind
    item_ids: IntArray
    scores: FloatArray

    @classmethod
    def of(
        cls,
        source: SourceKind,
        item_ids: Sequence[int] | IntArray,
        scores: Sequence[float] | FloatArray | None = None,
    ) -> SourceList:
        """Without scores: descending from 1 in the given order (a ranked list)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if scores is None:
            count = max(1, len(ids))
            values = (1.0 - np.arange(len(ids), dtype=np.float32) / count).astype(np.float32)
        else:
            values = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(values) != len(ids):
            raise ValueError(f"{source.value}: {len(ids)} items but {len(values)} scores")
        return cls(source, ids, values)


@dataclass(frozen=True)
class SourceColumn:
    """What one source said about each merged candidate (aligned with the candidates)."""

    source: SourceKind
    # The source's score; 0 where it did not find the candidate.
    scores: FloatArray
    # The candidate's position in the source's list (0 = its best); -1 where not found.
    positions: IntArray

    @property
    def found(self) -> npt.NDArray[np.bool_]:
        return self.positions >= 0


@dataclass(frozen=True)
class MergedCandidates:
    item_ids: IntArray
    # Per candidate: the first source (in MERGE_ORDER) that found it.
    first_sources: tuple[SourceKind, ...]
    columns: Mapping[SourceKind, SourceColumn]

    def __len__(self) -> int:
        return len(self.item_ids)

    def score_of(self, source: SourceKind) -> FloatArray:
        """The source's score per candidate (0 where it did not find it, or did not answer)."""
        column = self.columns.get(source)
        if column is None:
            return np.zeros(len(self.item_ids), np.float32)
        return column.scores


def merge_sources(
    lists: Sequence[SourceList], *, excluded: npt.ArrayLike | None = None
) -> MergedCandidates:
    """One row per item: sources in MERGE_ORDER (whatever order `lists` came in), each in its
    own order; items in `excluded` (the user's history) left out. A source listing an item
    twice keeps its first placement."""
    by_source = {listing.source: listing for listing in lists}
    if len(by_source) != len(lists):
        raise ValueError("a source appears twice")
    ordered = [by_source[source] for source in MERGE_ORDER if source in by_source]
    if not ordered:
        return MergedCandidates(np.empty(0, np.int64), (), {})
    all_ids = np.concatenate([listing.item_ids for listing in ordered])
    owner = np.concatenate(
        [np.full(len(listing.item_ids), index, np.int64) for index, listing in enumerate(ordered)]
    )
    # The first occurrence of each item, in merge order.
    _, first = np.unique(all_ids, return_index=True)
    keep = np.sort(first)
    if excluded is not None:
        blocked = np.asarray(excluded, dtype=np.int64).reshape(-1)
        if len(blocked):
            keep = keep[~np.isin(all_ids[keep], blocked)]
    item_ids = all_ids[keep]
    first_sources = tuple(ordered[index].source for index in owner[keep].tolist())
    sorter = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[sorter]
    columns: dict[SourceKind, SourceColumn] = {}
    for listing in ordered:
        scores = np.zeros(len(item_ids), np.float32)
        positions = np.full(len(item_ids), -1, np.int64)
        # Each item once, at its first placement in this source's list.
        ids, placed = np.unique(listing.item_ids, return_index=True)
        where = np.searchsorted(sorted_ids, ids)
        inside = where < len(sorted_ids)
        hit = np.zeros(len(ids), bool)
        hit[inside] = sorted_ids[where[inside]] == ids[inside]
        rows = sorter[where[hit]]
        scores[rows] = listing.scores[placed[hit]]
        positions[rows] = placed[hit]
        columns[listing.source] = SourceColumn(listing.source, scores, positions)
    return MergedCandidates(item_ids, first_sources, columns)


def select_candidates(merged: MergedCandidates, rows: IntArray) -> MergedCandidates:
    """The merged candidates at `rows`, in that order (columns follow)."""
    return MergedCandidates(
        merged.item_ids[rows],
        tuple(merged.first_sources[row] for row in rows.tolist()),
        {
            source: SourceColumn(source, column.scores[rows], column.positions[rows])
            for source, column in merged.columns.items()
        },
    )


@dataclass(frozen=True)
class CandidateMix:
    """How many candidates each source contributes before the merge (chosen per catalogue by
    `recsys train --tune`; the ranking model is trained on pools of this mix)."""

    retrieval: int = 300
    neighbours: int = 300
    popularity: int = 0

    def count(self, source: SourceKind) -> int:
        return {
            SourceKind.RETRIEVAL: self.retrieval,
            SourceKind.NEIGHBOURS: self.neighbours,
            SourceKind.POPULARITY: self.popularity,
        }[source]
