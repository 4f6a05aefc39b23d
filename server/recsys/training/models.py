"""The learned models: user and item embeddings (implicit's ALS on BM25-weighted
interactions), the ranking model (LightGBM lambdarank over exactly RANKING_FEATURES) and the
small ranking model distilled from it for tiered ranking, both exported to ONNX for Triton and
the in-process ONNX ranker."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.domain.candidates import SourceColumn, SourceKind
from recsys.domain.ordering import top_k_order
from recsys.domain.ranking import RANKING_FEATURES, RankingInputs, assemble_features
from recsys.domain.requests import DeviceType
from recsys.ranking.model_repository import MODEL_FILE, SCHEMA_FILE, FeatureSchema, write_schema

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# MovieLens and the synthetic catalogues carry no request context: every training row gets
# this time and no device, so the model learns nothing from those columns (the trees never
# split on a constant) and serves the same scores at any hour and on any device.
TRAINING_REQUEST_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
ONNX_OPSET = 15  # the newest onnxmltools' LightGBM converter supports


@dataclass(frozen=True)
class EmbeddingSettings:
    """Chosen on ML-100K with a validation split carved from the training data (docs/quality.md):
    strong regularisation of BM25-weighted ALS beats more factors."""

    factors: int = 64
    regularization: float = 20.0
    iterations: int = 15
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    seed: int = 0


@dataclass(frozen=True)
class RankerSettings:
    # LightGBM's ranking objective: "lambdarank" or "rank_xendcg" (cross-entropy NDCG loss;
    # `recsys train --tune` chooses between them on its validation split).
    objective: str = "lambdarank"
    trees: int = 100
    learning_rate: float = 0.05
    leaves: int = 7
    min_child_samples: int = 200
    # Share of each user's training pairs held out to label the ranker's rows, in each of
    # `folds` seeded splits: every fold fits the candidate sources without its held-out pairs
    # and labels its users' pools with them (more labelled pools than one split gives).
    holdout_ratio: float = 0.15
    folds: int = 5
    # Users whose pools become rows, over all folds (a seeded sample per fold): each costs a
    # pass over the whole catalogue, and a ranker of 17 features needs no more.
    max_users: int = 10_000
    seed: int = 0
    # The small model of tiered ranking (recsys.domain.rank_routing), distilled from this one:
    # a few shallow trees fitted to its scores cost a fraction of its CPU per candidate.
    small_trees: int = 10
    small_leaves: int = 4
    small_learning_rate: float = 0.3


@dataclass(frozen=True)
class Embeddings:
    user_vectors: FloatArray  # users x factors, rows as in the interaction table
    item_vectors: FloatArray  # items x factors


def fit_embeddings(
    interactions: sp.csr_matrix, settings: EmbeddingSettings, *, show_progress: bool = False
) -> Embeddings:
    """ALS on the users x items matrix (1 per interaction), BM25-weighted."""
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import bm25_weight

    weighted = bm25_weight(interactions, K1=settings.bm25_k1, B=settings.bm25_b).tocsr()
    # implicit runs its own threads; a multi-threaded BLAS under them only oversubscribes.
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=settings.factors,
            regularization=settings.regularization,
            iterations=settings.iterations,
            random_state=settings.seed,
            calculate_training_loss=False,
        )
        model.fit(weighted.astype(np.float32), show_progress=show_progress)
    return Embeddings(
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )


@dataclass(frozen=True)
class ItemSignals:
    """Per-item ranking inputs aligned with the item rows, and per-user preferences."""

    popularity: FloatArray
    freshness: FloatArray
    category_rows: IntArray
    categories: list[str]
    preferences: FloatArray  # users x categories in [0, 1]


def popularity_of(interactions: sp.csr_matrix) -> FloatArray:
    """Counts of distinct user-item pairs on the catalogue loader's log scale, in [0, 1]."""
    counts = np.asarray(interactions.sum(axis=0)).ravel()
    top = counts.max(initial=0)
    if not top:
        return np.zeros(len(counts), np.float32)
    result: FloatArray = (np.log1p(counts) / np.log1p(top)).astype(np.float32)
    return result


def preferences_of(
    interactions: sp.csr_matrix, category_rows: IntArray, category_count: int
) -> FloatArray:
    """Each user's share of interactions per category, scaled so the favourite is 1."""
    coo = interactions.tocoo()
    counts = np.zeros((interactions.shape[0], category_count), np.float32)
    np.add.at(counts, (coo.row, category_rows[coo.col]), 1.0)
    top = counts.max(axis=1, keepdims=True)
    result: FloatArray = np.divide(counts, top, out=np.zeros_like(counts), where=top > 0)
    return result


def top_candidates(
    user_vector: FloatArray, item_vectors: FloatArray, count: int
) -> tuple[IntArray, FloatArray]:
    """Item rows of the `count` best inner products in rank order (item rows follow item ids,
    so ties go to the lower item id)."""
    return top_of((item_vectors @ user_vector).astype(np.float32), count)


def top_of(scores: FloatArray, count: int) -> tuple[IntArray, FloatArray]:
    """Rows of the `count` highest scores in rank order (score descending, then row)."""
    head = top_k_order(np.arange(len(scores)), scores, count)
    return head, scores[head]


def candidate_feature_rows(
    user_vector: FloatArray,
    candidate_rows: IntArray,
    candidate_scores: FloatArray,
    item_vectors: FloatArray,
    signals: ItemSignals,
    user_row: int,
    *,
    sources: Mapping[SourceKind, SourceColumn] | None = None,
    history_size: int | None = None,
) -> FloatArray:
    """The candidates' feature matrix, assembled by the same function the Rank service uses."""
    preferences = signals.preferences[user_row]
    return assemble_features(
        RankingInputs(
            candidate_scores=candidate_scores,
            popularity=signals.popularity[candidate_rows],
            freshness=signals.freshness[candidate_rows],
            category_affinity=preferences[signals.category_rows[candidate_rows]],
            item_vectors=item_vectors[candidate_rows],
            user_vector=user_vector,
            request_time=TRAINING_REQUEST_TIME,
            device_type=DeviceType.UNKNOWN,
            sources=sources or {},
            history_size=history_size,
        )
    )


def fit_ranker(
    features: FloatArray, labels: FloatArray, groups: list[int], settings: RankerSettings
) -> Any:
    """A LightGBM ranking model (`settings.objective`); returns its Booster."""
    import lightgbm

    model = lightgbm.LGBMRanker(
        objective=settings.objective,
        n_estimators=settings.trees,
        learning_rate=settings.learning_rate,
        num_leaves=settings.leaves,
        min_child_samples=settings.min_child_samples,
        random_state=settings.seed,
        n_jobs=1,
        deterministic=True,
        verbose=-1,
    )
    model.fit(features, labels, group=groups)
    return model.booster_


def distillation_targets(teacher_scores: FloatArray, groups: list[int]) -> FloatArray:
    """The full model's scores less each group's mean: only the order within a user's
    candidates matters to ranking, so the small model spends no trees on per-user offsets."""
    bounds = np.cumsum([0, *groups])
    sums = np.add.reduceat(teacher_scores.astype(np.float64), bounds[:-1])
    means = np.repeat(sums / np.asarray(groups, dtype=np.float64), groups)
    result: FloatArray = (teacher_scores - means).astype(np.float32)
    return result


def fit_small_ranker(
    features: FloatArray, teacher: Any, groups: list[int], settings: RankerSettings
) -> Any:
    """The small model of tiered ranking: a LightGBM regressor with `small_trees` trees of
    `small_leaves` leaves fitted to the full model's (`teacher`, a Booster) within-user scores
    on the same training rows (distillation); returns its Booster."""
    import lightgbm

    targets = distillation_targets(np.asarray(teacher.predict(features), dtype=np.float32), groups)
    model = lightgbm.LGBMRegressor(
        n_estimators=settings.small_trees,
        learning_rate=settings.small_learning_rate,
        num_leaves=settings.small_leaves,
        min_child_samples=settings.min_child_samples,
        random_state=settings.seed,
        n_jobs=1,
        deterministic=True,
        verbose=-1,
    )
    model.fit(features, targets)
    return model.booster_


def ranker_to_onnx(booster: Any, *, name: str = "recsys_ranker") -> bytes:
    """The booster as ONNX with the tensor names Triton's config and the schema use:
    features[batch, F] -> scores[batch, 1]."""
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    width = len(RANKING_FEATURES)
    model = convert_lightgbm(
        booster,
        name=name,
        initial_types=[("features", FloatTensorType([None, width]))],
        target_opset=ONNX_OPSET,
        zipmap=False,
    )
    (output,) = model.graph.output
    produced = output.name
    for node in model.graph.node:
        node.output[:] = ["scores" if name == produced else name for name in node.output]
    output.name = "scores"
    model.producer_name = "recsys"
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def write_model_version(model_folder: Path, version: str, serialized: bytes) -> Path:
    """`<model_folder>/<version>/model.onnx` with its feature schema, written in a staging
    folder and renamed, so a watching ranker never sees half a version."""
    folder = model_folder / version
    if folder.exists():
        raise FileExistsError(f"model version {folder} exists")
    staging = model_folder / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir(parents=True)
    try:
        (staging / MODEL_FILE).write_bytes(serialized)
        write_schema(staging / SCHEMA_FILE, FeatureSchema(features=RANKING_FEATURES))
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def next_model_version(*model_folders: Path) -> str:
    """Triton numbers versions: one past the highest present in any of the folders (models
    trained together share the number)."""
    numbers = [
        int(p.name)
        for folder in model_folders
        for p in folder.glob("*")
        if p.is_dir() and p.name.isdigit()
    ]
    return str(max(numbers, default=0) + 1)
