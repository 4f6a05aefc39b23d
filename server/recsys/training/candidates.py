"""The candidate sources as training sees them: the models they are built from, fitted on one
interaction table, and a user's merged pool exactly as the Recommend pipeline merges it
(`recsys.domain.candidates.merge_sources`), so the ranking model trains on the features it is
served:

- retrieval: the top `mix.retrieval` items by user . item (the user's own items included, as
  the index returns them; the merge then leaves the history out);
- neighbours: `ItemNeighbours.top` over the user's history (the newest `history_limit` items
  by id, as served);
- popularity: the `mix.popularity` most popular items (popularity descending, item id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.data.catalogue import Catalogue
from recsys.domain.candidates import (
    CandidateMix,
    MergedCandidates,
    SourceKind,
    SourceList,
    merge_sources,
)
from recsys.domain.ordering import ranked_order
from recsys.similarity.fit import NeighbourSettings, build_neighbours
from recsys.similarity.neighbours import ItemNeighbours
from recsys.training.dataset import InteractionTable, random_split
from recsys.training.models import (
    Embeddings,
    EmbeddingSettings,
    ItemSignals,
    candidate_feature_rows,
    fit_embeddings,
    top_of,
)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# History items seeding the neighbour source (`candidates.history_limit` when served).
HISTORY_LIMIT = 500


@dataclass(frozen=True)
class CandidateModels:
    """What the candidate sources are built from, fitted on `table`."""

    table: InteractionTable
    embeddings: Embeddings
    neighbours: ItemNeighbours
    signals: ItemSignals
    # Item ids by popularity (descending, then item id): the popularity source's order.
    popular_ids: IntArray


def fit_candidate_models(
    catalogue: Catalogue,
    table: InteractionTable,
    embedding: EmbeddingSettings,
    neighbour_settings: NeighbourSettings,
    *,
    signals_of: Callable[[Catalogue, InteractionTable], ItemSignals],
    show_progress: bool = False,
) -> CandidateModels:
    matrix = table.matrix()
    signals = signals_of(catalogue, table)
    return CandidateModels(
        table=table,
        embeddings=fit_embeddings(matrix, embedding, show_progress=show_progress),
        neighbours=build_neighbours(matrix, table.item_ids, neighbour_settings),
        signals=signals,
        popular_ids=table.item_ids[ranked_order(table.item_ids, signals.popularity)],
    )


def user_pool(
    models: CandidateModels,
    user_row: int,
    seen_rows: IntArray,
    mix: CandidateMix,
    *,
    item_scores: FloatArray | None = None,
    history_limit: int = HISTORY_LIMIT,
) -> MergedCandidates:
    """The user's merged candidates (history left out); `item_scores`: the user's scores over
    every item when already computed (a block product)."""
    table = models.table
    seen_ids = table.item_ids[seen_rows]
    lists = []
    if mix.retrieval > 0:
        if item_scores is None:
            item_scores = (
                models.embeddings.item_vectors @ models.embeddings.user_vectors[user_row]
            ).astype(np.float32)
        rows, scores = top_of(item_scores, mix.retrieval)
        lists.append(SourceList(SourceKind.RETRIEVAL, table.item_ids[rows], scores))
    if mix.neighbours > 0:
        lists.append(models.neighbours.top(seen_ids, mix.neighbours, history_limit=history_limit))
    if mix.popularity > 0:
        lists.append(SourceList.of(SourceKind.POPULARITY, models.popular_ids[: mix.popularity]))
    return merge_sources(lists, excluded=seen_ids)


def pool_features(
    models: CandidateModels, user_row: int, pool: MergedCandidates, history_size: int
) -> FloatArray:
    """The pool's ranking features, assembled by the Rank service's own function."""
    rows = np.searchsorted(models.table.item_ids, pool.item_ids)
    return candidate_feature_rows(
        models.embeddings.user_vectors[user_row],
        rows,
        pool.score_of(SourceKind.RETRIEVAL),
        models.embeddings.item_vectors,
        models.signals,
        user_row,
        sources=pool.columns,
        history_size=history_size,
    )


def ranker_rows(
    models: CandidateModels,
    seen: Sequence[IntArray],
    held_out: Sequence[IntArray],
    mix: CandidateMix,
    *,
    max_users: int | None = None,
    seed: int = 0,
    history_limit: int = HISTORY_LIMIT,
    show_progress: bool = False,
) -> tuple[FloatArray, FloatArray, list[int]]:
    """For each user with held-out items (at most `max_users`, a seeded sample): the merged
    pool of the sources fitted without those items, labelled 1 where held out. Returns
    features, labels and group sizes; users whose pool holds no held-out item are left out
    (lambdarank learns nothing from them)."""
    from tqdm import tqdm

    users = np.array([row for row, items in enumerate(held_out) if len(items)], dtype=np.int64)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    item_vectors = models.embeddings.item_vectors
    block = max(1, (1 << 25) // max(1, len(item_vectors)))
    features, labels, groups = [], [], []
    with tqdm(total=len(users), desc="ranker rows", unit="user", disable=not show_progress) as bar:
        for start in range(0, len(users), block):
            chunk = users[start : start + block]
            block_scores = (models.embeddings.user_vectors[chunk] @ item_vectors.T).astype(
                np.float32, copy=False
            )
            for position, user_row in enumerate(chunk.tolist()):
                pool = user_pool(
                    models,
                    user_row,
                    seen[user_row],
                    mix,
                    item_scores=block_scores[position],
                    history_limit=history_limit,
                )
                positives = models.table.item_ids[held_out[user_row]]
                label = np.isin(pool.item_ids, positives).astype(np.float32)
                if not label.any():
                    continue
                features.append(pool_features(models, user_row, pool, len(seen[user_row])))
                labels.append(label)
                groups.append(len(label))
            bar.update(len(chunk))
    if not groups:
        raise ValueError("no user has a held-out item among its candidates; too little data")
    return np.concatenate(features), np.concatenate(labels), groups


def cross_fitted_rows(
    inner: Callable[[int], tuple[CandidateModels, list[IntArray]]],
    folds: int,
    mix: CandidateMix,
    *,
    max_users: int | None = None,
    seed: int = 0,
    history_limit: int = HISTORY_LIMIT,
    show_progress: bool = False,
) -> tuple[FloatArray, FloatArray, list[int]]:
    """`ranker_rows` of every fold, together: `inner(fold)` gives the sources fitted without
    that fold's held-out pairs and the held-out item rows per user. `max_users` is shared
    among the folds."""
    per_fold = None if max_users is None else max(1, max_users // max(1, folds))
    features, labels, groups = [], [], []
    for fold in range(folds):
        models, held_out = inner(fold)
        fold_features, fold_labels, fold_groups = ranker_rows(
            models,
            models.table.items_by_user(),
            held_out,
            mix,
            max_users=per_fold,
            seed=seed + fold,
            history_limit=history_limit,
            show_progress=show_progress,
        )
        features.append(fold_features)
        labels.append(fold_labels)
        groups.extend(fold_groups)
    return np.concatenate(features), np.concatenate(labels), groups


def inner_models(
    catalogue: Catalogue,
    table: InteractionTable,
    embedding: EmbeddingSettings,
    neighbour_settings: NeighbourSettings,
    *,
    holdout_ratio: float,
    seed: int,
    signals_of: Callable[[Catalogue, InteractionTable], ItemSignals],
    show_progress: bool = False,
) -> Callable[[int], tuple[CandidateModels, list[IntArray]]]:
    """Fold `fold`'s sources: fitted on `table` less a seeded `holdout_ratio` of each user's
    pairs (seed `seed + 7 + fold`), with the held-out item rows per user."""

    def fit(fold: int) -> tuple[CandidateModels, list[IntArray]]:
        kept, held = random_split(table, train_ratio=1 - holdout_ratio, seed=seed + 7 + fold)
        models = fit_candidate_models(
            catalogue,
            kept,
            embedding,
            neighbour_settings,
            signals_of=signals_of,
            show_progress=show_progress,
        )
        return models, held.items_by_user()

    return fit
