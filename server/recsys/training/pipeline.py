"""`recsys train`: embeddings and ranking model from a catalogue's interactions, and the files
the platform serves from them.

The ranker must learn what retrieval misses, so its rows come from a model that has not seen the
labels: a share of each user's training pairs (`RankerSettings.holdout_ratio`, 10%) is held
out, embeddings are fitted on the rest, candidates are retrieved with them and labelled by the
held-out pairs. The small model of tiered ranking is distilled from the ranker on the same rows.
The served embeddings are then fitted on every training pair."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.catalogue import Catalogue
from recsys.data.features_file import FeatureSnapshot, save_features
from recsys.index.embeddings_file import ItemEmbeddings, save_embeddings
from recsys.training.dataset import InteractionTable, random_split
from recsys.training.models import (
    Embeddings,
    EmbeddingSettings,
    ItemSignals,
    RankerSettings,
    fit_embeddings,
    fit_ranker,
    fit_small_ranker,
    next_model_version,
    popularity_of,
    preferences_of,
    ranker_to_onnx,
    ranker_training_rows,
    write_model_version,
)

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "item_embeddings.npz"
FEATURES_FILE = "features.npz"
REPORT_FILE = "train_report.json"


def default_embedding_version(now: dt.datetime | None = None) -> str:
    return "als-" + (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")


@dataclass
class TrainedModels:
    table: InteractionTable
    embeddings: Embeddings
    signals: ItemSignals
    ranker_onnx: bytes
    embedding_version: str
    generated_at: dt.datetime
    report: dict[str, Any] = field(default_factory=dict)
    # The small model of tiered ranking, distilled from the ranker; None: not trained.
    small_ranker_onnx: bytes | None = None


def item_signals(catalogue: Catalogue, table: InteractionTable) -> ItemSignals:
    """Popularity from `table` (the training pairs only), freshness and categories from the
    catalogue, preferences of `table`'s users."""
    category_of = {item.item_id: item.category for item in catalogue.items}
    categories = sorted(set(category_of.values()) | {""})
    position = {name: row for row, name in enumerate(categories)}
    category_rows = np.array(
        [position[category_of.get(int(item), "")] for item in table.item_ids], dtype=np.int64
    )
    matrix = table.matrix()
    freshness = np.array(
        [catalogue.freshness.get(int(item), 0.0) for item in table.item_ids], dtype=np.float32
    )
    return ItemSignals(
        popularity=popularity_of(matrix),
        freshness=freshness,
        category_rows=category_rows,
        categories=categories,
        preferences=preferences_of(matrix, category_rows, len(categories)),
    )


def train_models(
    catalogue: Catalogue,
    table: InteractionTable,
    *,
    embedding: EmbeddingSettings | None = None,
    ranker: RankerSettings | None = None,
    embedding_version: str | None = None,
    show_progress: bool = False,
    step: Callable[[str], None] | None = None,
) -> TrainedModels:
    embedding = embedding or EmbeddingSettings()
    ranker = ranker or RankerSettings()
    timings: dict[str, float] = {}

    def timed(name: str) -> Callable[[], None]:
        if step:
            step(name)
        started = time.perf_counter()
        return lambda: timings.__setitem__(name, round(time.perf_counter() - started, 3))

    done = timed("ranker rows: embeddings on part of each user's training pairs")
    inner, held_out = random_split(
        table, train_ratio=1 - ranker.holdout_ratio, seed=ranker.seed + 7
    )
    inner_embeddings = fit_embeddings(inner.matrix(), embedding, show_progress=show_progress)
    features, labels, groups = ranker_training_rows(
        inner_embeddings,
        item_signals(catalogue, inner),
        inner.items_by_user(),
        held_out.items_by_user(),
        ranker.candidates,
        max_users=ranker.max_users,
        seed=ranker.seed,
        show_progress=show_progress,
    )
    done()
    done = timed("ranking model: LightGBM lambdarank")
    booster = fit_ranker(features, labels, groups, ranker)
    serialized = ranker_to_onnx(booster)
    done()
    done = timed("small ranking model: distilled from the ranking model")
    small_booster = fit_small_ranker(features, booster, groups, ranker)
    small_serialized = ranker_to_onnx(small_booster, name="recsys_ranker_small")
    done()
    done = timed("served embeddings: ALS on every training pair")
    embeddings = fit_embeddings(table.matrix(), embedding, show_progress=show_progress)
    done()
    generated_at = dt.datetime.now(dt.UTC)
    importance = dict(
        zip(booster.feature_name(), booster.feature_importance().tolist(), strict=True)
    )
    report = {
        "users": table.user_count,
        "items": table.item_count,
        "training_pairs": len(table),
        "ranker_rows": len(labels),
        "ranker_groups": len(groups),
        "ranker_positive_share": round(float(labels.mean()), 4),
        "ranker_split_importance": importance,
        "embedding": embedding.__dict__,
        "ranker": ranker.__dict__,
        "seconds": timings,
    }
    return TrainedModels(
        table=table,
        embeddings=embeddings,
        signals=item_signals(catalogue, table),
        ranker_onnx=serialized,
        embedding_version=embedding_version or default_embedding_version(generated_at),
        generated_at=generated_at,
        report=report,
        small_ranker_onnx=small_serialized,
    )


def feature_snapshot(models: TrainedModels) -> FeatureSnapshot:
    signals = models.signals
    vectors = models.embeddings.user_vectors
    return FeatureSnapshot(
        embedding_version=models.embedding_version,
        generated_at=models.generated_at,
        user_ids=models.table.user_ids,
        user_vectors=vectors,
        preference_categories=signals.categories,
        user_preferences=signals.preferences,
        item_ids=models.table.item_ids,
        item_categories=[signals.categories[row] for row in signals.category_rows],
        item_popularity=signals.popularity,
        item_freshness=signals.freshness,
        item_vectors=models.embeddings.item_vectors,
        # Users without features get the average taste (seed "Feature Store Timeout Handling").
        default_user_vector=(
            vectors.mean(axis=0) if len(vectors) else np.zeros(vectors.shape[1], np.float32)
        ).astype(np.float32),
    )


@dataclass(frozen=True)
class TrainingArtifacts:
    embeddings_path: Path
    features_path: Path
    report_path: Path
    model_folder: Path
    model_version: str
    embedding_version: str
    # The small model's version folder (same version number), when one was trained.
    small_model_folder: Path | None = None


def write_artifacts(
    models: TrainedModels,
    *,
    output: Path,
    model_repository: Path,
    model_name: str = "ranker",
    model_version: str | None = None,
    small_model_name: str = "ranker_small",
) -> TrainingArtifacts:
    """Item embeddings (for `recsys index build`), the feature snapshot (for the feature
    store), a new model version in the Triton repository (and the small model's, under the
    same number, so a pinned version pins the pair), and a JSON report."""
    model_root = model_repository / model_name
    small_root = model_repository / small_model_name if models.small_ranker_onnx else None
    roots = [model_root] if small_root is None else [model_root, small_root]
    version = model_version or next_model_version(*roots)
    for root in roots:
        if (root / version).exists():
            # Checked before anything is written, so a refused run changes nothing.
            raise FileExistsError(f"model version {root / version} exists")
    output.mkdir(parents=True, exist_ok=True)
    embeddings_path = output / EMBEDDINGS_FILE
    save_embeddings(
        embeddings_path,
        ItemEmbeddings(
            models.table.item_ids, models.embeddings.item_vectors, models.embedding_version
        ),
    )
    features_path = output / FEATURES_FILE
    save_features(features_path, feature_snapshot(models))
    folder = write_model_version(model_root, version, models.ranker_onnx)
    small_folder = None
    if small_root is not None and models.small_ranker_onnx is not None:
        small_folder = write_model_version(small_root, version, models.small_ranker_onnx)
    report_path = output / REPORT_FILE
    report = {
        **models.report,
        "embedding_version": models.embedding_version,
        "model_version": version,
        "model_folder": str(folder),
        "small_model_folder": str(small_folder) if small_folder else None,
        "embeddings": str(embeddings_path),
        "features": str(features_path),
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return TrainingArtifacts(
        embeddings_path,
        features_path,
        report_path,
        folder,
        version,
        models.embedding_version,
        small_folder,
    )
