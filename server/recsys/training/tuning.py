"""`recsys train --tune`: hyperparameters chosen per catalogue on a validation split carved from
the training data only (the same protocol as the evaluation that will judge them), never on a
test split.

Coordinate search, each step keeping the best of the previous ones (NDCG@10 on the validation
users, a seeded sample of at most `max_users`):
1. ALS: factors x regularisation, then iterations and the BM25 weighting (retrieval alone);
2. EASE^R's lambda (the neighbour source alone), while the catalogue is small enough for it;
3. the candidate mix, then the ranking model's settings, then its held-out share (the whole
   pipeline: sources merged and ranked, as served).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.data.catalogue import Catalogue
from recsys.domain.candidates import CandidateMix
from recsys.domain.ordering import ranked_order, top_k_order
from recsys.similarity.fit import NeighbourSettings, build_neighbours
from recsys.training.candidates import (
    HISTORY_LIMIT,
    CandidateModels,
    cross_fitted_rows,
    fit_candidate_models,
    inner_models,
    pool_features,
    user_pool,
)
from recsys.training.dataset import InteractionTable
from recsys.training.models import (
    EmbeddingSettings,
    ItemSignals,
    RankerSettings,
    fit_embeddings,
    fit_ranker,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
Split = Callable[[InteractionTable], tuple[InteractionTable, InteractionTable]]
K = 10
# Fitted fold sources are cached across the tuning steps up to this catalogue size.
CACHE_MAX_ITEMS = 200_000


@dataclass(frozen=True)
class TuningGrid:
    factors: tuple[int, ...] = (32, 64, 128)
    regularization: tuple[float, ...] = (5.0, 20.0, 50.0)
    iterations: tuple[int, ...] = (15, 30)
    bm25_b: tuple[float, ...] = (0.8, 0.5, 1.0)
    ease_lambda: tuple[float, ...] = (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)
    mixes: tuple[CandidateMix, ...] = (
        CandidateMix(retrieval=300, neighbours=300, popularity=0),
        CandidateMix(retrieval=300, neighbours=300, popularity=30),
        CandidateMix(retrieval=150, neighbours=150, popularity=0),
        CandidateMix(retrieval=600, neighbours=300, popularity=0),
    )
    rankers: tuple[RankerSettings, ...] = (
        RankerSettings(),
        RankerSettings(objective="rank_xendcg"),
        RankerSettings(objective="rank_xendcg", min_child_samples=50),
        RankerSettings(trees=200, leaves=15, min_child_samples=100),
    )
    holdout_ratios: tuple[float, ...] = (0.15, 0.25)
    # Validation users scored per candidate setting (a seeded sample).
    max_users: int = 2_000
    seed: int = 7


@dataclass(frozen=True)
class TrainingSettings:
    """Everything `train_models` fits with."""

    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    neighbours: NeighbourSettings = field(default_factory=NeighbourSettings)
    mix: CandidateMix = field(default_factory=CandidateMix)
    ranker: RankerSettings = field(default_factory=RankerSettings)


@dataclass
class TuningReport:
    chosen: TrainingSettings
    # Step -> [(settings tried, validation NDCG@10)], in the order tried.
    trials: dict[str, list[tuple[dict[str, Any], float]]] = field(default_factory=dict)
    validation_pairs: int = 0
    validation_users: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "chosen": {
                "embedding": asdict(self.chosen.embedding),
                "neighbours": asdict(self.chosen.neighbours),
                "mix": asdict(self.chosen.mix),
                "ranker": asdict(self.chosen.ranker),
            },
            "validation_ndcg_at_10": {
                step: [{"settings": tried, "ndcg": round(score, 5)} for tried, score in results]
                for step, results in self.trials.items()
            },
            "validation_pairs": self.validation_pairs,
            "validation_users": self.validation_users,
            "seconds": round(self.seconds, 1),
        }


def ndcg(lists: Sequence[IntArray], relevant: Sequence[set[int]], k: int = K) -> float:
    """Mean NDCG@k with binary relevance (as recsys.evaluation.metrics), over the users with a
    relevant item."""
    total = 0.0
    counted = 0
    for items, wanted in zip(lists, relevant, strict=True):
        if not wanted:
            continue
        counted += 1
        gains = sum(
            1.0 / math.log2(rank + 2) for rank, item in enumerate(items[:k]) if int(item) in wanted
        )
        ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(wanted))))
        total += gains / ideal
    return total / max(1, counted)


class _Validation:
    """The validation split and what every step scores against."""

    def __init__(self, table: InteractionTable, split: Split, grid: TuningGrid) -> None:
        self.fit, valid = split(table)
        held = valid.items_by_user()
        users = np.array([row for row, items in enumerate(held) if len(items)], np.int64)
        if len(users) > grid.max_users:
            rng = np.random.default_rng(grid.seed)
            users = np.sort(rng.choice(users, grid.max_users, replace=False))
        self.users = users
        self.seen = self.fit.items_by_user()
        self.relevant = [set(table.item_ids[held[row]].tolist()) for row in users.tolist()]
        self.pairs = len(valid)

    def top_unseen(self, user_row: int, scores: npt.NDArray[np.float32]) -> IntArray:
        scores = scores.copy()
        scores[self.seen[user_row]] = -np.inf
        head = top_k_order(self.fit.item_ids, scores, K)
        return self.fit.item_ids[head]


def _retrieval_ndcg(validation: _Validation, embedding: EmbeddingSettings) -> float:
    embeddings = fit_embeddings(validation.fit.matrix(), embedding)
    block = embeddings.user_vectors[validation.users] @ embeddings.item_vectors.T
    lists = [
        validation.top_unseen(row, block[position].astype(np.float32))
        for position, row in enumerate(validation.users.tolist())
    ]
    return ndcg(lists, validation.relevant)


def _neighbours_ndcg(validation: _Validation, settings: NeighbourSettings) -> float:
    store = build_neighbours(validation.fit.matrix(), validation.fit.item_ids, settings)
    item_ids = validation.fit.item_ids
    lists = [
        store.top(item_ids[validation.seen[row]], K, history_limit=HISTORY_LIMIT).item_ids
        for row in validation.users.tolist()
    ]
    return ndcg(lists, validation.relevant)


def pipeline_ndcg(
    validation_fit: InteractionTable,
    served: CandidateModels,
    rows: tuple[FloatArray, FloatArray, list[int]],
    users: IntArray,
    relevant: list[set[int]],
    mix: CandidateMix,
    ranker: RankerSettings,
) -> float:
    """The whole pipeline on validation users: a ranker trained on `rows` (pools of sources
    fitted without their labels), applied to the pools of `served` (sources fitted on the
    validation's training part)."""
    booster = fit_ranker(*rows, ranker)
    seen = validation_fit.items_by_user()
    lists = []
    for row in users.tolist():
        pool = user_pool(served, row, seen[row], mix)
        if not len(pool):
            lists.append(np.empty(0, np.int64))
            continue
        scores = np.asarray(
            booster.predict(pool_features(served, row, pool, len(seen[row]))), np.float32
        )
        lists.append(pool.item_ids[ranked_order(pool.item_ids, scores)[:K]])
    return ndcg(lists, relevant)


def tune(
    catalogue: Catalogue,
    table: InteractionTable,
    split: Split,
    *,
    signals_of: Callable[[Catalogue, InteractionTable], ItemSignals],
    start: TrainingSettings | None = None,
    grid: TuningGrid | None = None,
    step: Callable[[str], None] | None = None,
) -> TuningReport:
    """Chooses the training settings on a validation split of `table` made by `split`."""
    started = time.perf_counter()
    grid = grid or TuningGrid()
    chosen = start or TrainingSettings()
    say = step or (lambda message: None)
    validation = _Validation(table, split, grid)
    report = TuningReport(chosen, validation_pairs=validation.pairs)
    report.validation_users = len(validation.users)

    def best_of(name: str, candidates: list[Any], score: Callable[[Any], float]) -> Any:
        results = []
        for candidate in candidates:
            value = score(candidate)
            say(f"tuning {name}: {_describe(candidate)} -> NDCG@10 {value:.4f}")
            results.append((candidate, value))
        report.trials[name] = [(_describe(candidate), value) for candidate, value in results]
        # The first of equal scores: the grid lists the cheaper settings first.
        return max(results, key=lambda pair: pair[1])[0]

    embedding = chosen.embedding
    embedding = best_of(
        "als_factors_regularization",
        [
            replace(embedding, factors=factors, regularization=regularization)
            for factors in grid.factors
            for regularization in grid.regularization
        ],
        lambda candidate: _retrieval_ndcg(validation, candidate),
    )
    embedding = best_of(
        "als_iterations_weighting",
        [
            replace(embedding, iterations=iterations, bm25_b=b)
            for iterations in grid.iterations
            for b in grid.bm25_b
        ],
        lambda candidate: _retrieval_ndcg(validation, candidate),
    )
    neighbours = chosen.neighbours
    if table.item_count <= neighbours.ease_max_items:
        neighbours = best_of(
            "ease_lambda",
            [replace(neighbours, ease_lambda=value) for value in grid.ease_lambda],
            lambda candidate: _neighbours_ndcg(validation, candidate),
        )
    fit = validation.fit
    served = fit_candidate_models(catalogue, fit, embedding, neighbours, signals_of=signals_of)
    # Fitted sources per (held-out share, fold) and rows per (share, folds, mix): the steps
    # below try rankers and mixes over the same folds.
    fitted: dict[tuple[float, int, int], tuple[CandidateModels, list[IntArray]]] = {}
    rows_cache: dict[tuple[Any, ...], tuple[FloatArray, FloatArray, list[int]]] = {}

    def rows_for(
        mix: CandidateMix, ranker: RankerSettings
    ) -> tuple[FloatArray, FloatArray, list[int]]:
        key = (ranker.holdout_ratio, ranker.folds, ranker.seed, ranker.max_users, mix)
        if key not in rows_cache:
            fit_fold = inner_models(
                catalogue,
                fit,
                embedding,
                neighbours,
                holdout_ratio=ranker.holdout_ratio,
                seed=ranker.seed,
                signals_of=signals_of,
            )

            def cached(fold: int) -> tuple[CandidateModels, list[IntArray]]:
                fold_key = (ranker.holdout_ratio, ranker.seed, fold)
                if fold_key in fitted:
                    return fitted[fold_key]
                models = fit_fold(fold)
                # Kept for the next mix only while a fold's sources are small: at a million
                # items each holds about a gigabyte.
                if fit.item_count <= CACHE_MAX_ITEMS:
                    fitted[fold_key] = models
                return models

            rows_cache[key] = cross_fitted_rows(
                cached, ranker.folds, mix, max_users=ranker.max_users, seed=ranker.seed
            )
        return rows_cache[key]

    def whole(mix: CandidateMix, ranker: RankerSettings) -> float:
        return pipeline_ndcg(
            fit, served, rows_for(mix, ranker), validation.users, validation.relevant, mix, ranker
        )

    ranker = chosen.ranker
    mix = best_of("candidate_mix", list(grid.mixes), lambda candidate: whole(candidate, ranker))
    ranker = best_of(
        "ranker",
        [replace(option, holdout_ratio=ranker.holdout_ratio) for option in grid.rankers],
        lambda candidate: whole(mix, candidate),
    )
    ranker = best_of(
        "ranker_holdout_ratio",
        [replace(ranker, holdout_ratio=ratio) for ratio in grid.holdout_ratios],
        lambda candidate: whole(mix, candidate),
    )
    report.chosen = TrainingSettings(embedding, neighbours, mix, ranker)
    report.seconds = time.perf_counter() - started
    return report


def _describe(settings: Any) -> dict[str, Any]:
    return asdict(settings)
