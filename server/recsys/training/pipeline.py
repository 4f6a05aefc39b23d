"""`recsys train`: embeddings and ranking model from a catalogue's interactions, and the files
the platform serves from them.

Candidates come from several sources merged before ranking (ALS retrieval, item-to-item
neighbours, popularity; recsys.training.candidates). The ranker must learn what they miss, so its
rows come from sources that have not seen the labels: a share of each user's training pairs
(`RankerSettings.holdout_ratio`) is held out, the sources are fitted on the rest, each user's
merged pool is labelled by the held-out pairs. The small model of tiered ranking is distilled
from the ranker on the same rows. The served sources are then fitted on every training pair.
With `tune_split` every setting is first chosen on a validation split (recsys.training.tuning)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.data.catalogue import Catalogue
from recsys.data.features_file import FeatureSnapshot, save_features
from recsys.domain.candidates import CandidateMix
from recsys.domain.ranking import RANKING_FEATURES
from recsys.index.embeddings_file import ItemEmbeddings, save_embeddings
from recsys.similarity.fit import NeighbourSettings
from recsys.similarity.neighbours import ItemNeighbours, save_neighbours
from recsys.training.candidates import cross_fitted_rows, fit_candidate_models, inner_models
from recsys.training.dataset import InteractionTable
from recsys.training.models import (
    Embeddings,
    EmbeddingSettings,
    ItemSignals,
    RankerSettings,
    fit_ranker,
    fit_small_ranker,
    next_model_version,
    popularity_of,
    preferences_of,
    ranker_to_onnx,
    write_model_version,
)
from recsys.training.tuning import Split, TrainingSettings, TuningGrid, TuningReport, tune

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

EMBEDDINGS_FILE = "item_embeddings.npz"
FEATURES_FILE = "features.npz"
NEIGHBOURS_FILE = "item_neighbours.npz"
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
    # The item-to-item neighbour store of the neighbours candidate source.
    neighbours: ItemNeighbours | None = None
    # How many candidates each source gives (the ranker was trained on pools of this mix).
    candidate_mix: CandidateMix = field(default_factory=CandidateMix)
    # Item ids by training popularity (the popularity source's order).
    popular_ids: IntArray | None = None
    # How the neighbour store was built (EASE^R's lambda...).
    neighbour_settings: NeighbourSettings = field(default_factory=NeighbourSettings)


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
    neighbours: NeighbourSettings | None = None,
    mix: CandidateMix | None = None,
    tune_split: Split | None = None,
    tuning_grid: TuningGrid | None = None,
    embedding_version: str | None = None,
    show_progress: bool = False,
    step: Callable[[str], None] | None = None,
) -> TrainedModels:
    """`tune_split`: choose the settings on a validation split of `table` made by it (the
    protocol of the evaluation to come: random or leave-last-out); the given settings are the
    search's starting point and the values it does not search keep theirs."""
    settings = TrainingSettings(
        embedding=embedding or EmbeddingSettings(),
        neighbours=neighbours or NeighbourSettings(),
        mix=mix or CandidateMix(),
        ranker=ranker or RankerSettings(),
    )
    timings: dict[str, float] = {}

    def timed(name: str) -> Callable[[], None]:
        if step:
            step(name)
        started = time.perf_counter()
        return lambda: timings.__setitem__(name, round(time.perf_counter() - started, 3))

    tuning: TuningReport | None = None
    if tune_split is not None:
        done = timed("tuning on a validation split of the training data")
        tuning = tune(
            catalogue,
            table,
            tune_split,
            signals_of=item_signals,
            start=settings,
            grid=tuning_grid,
            step=step,
        )
        settings = tuning.chosen
        done()
    ranker = settings.ranker
    done = timed(
        f"ranker rows: candidate sources fitted {ranker.folds} times, each without a share of "
        "each user's training pairs"
    )
    features, labels, groups = cross_fitted_rows(
        inner_models(
            catalogue,
            table,
            settings.embedding,
            settings.neighbours,
            holdout_ratio=ranker.holdout_ratio,
            seed=ranker.seed,
            signals_of=item_signals,
            show_progress=show_progress,
        ),
        ranker.folds,
        settings.mix,
        max_users=ranker.max_users,
        seed=ranker.seed,
        show_progress=show_progress,
    )
    done()
    done = timed(f"ranking model: LightGBM {ranker.objective}")
    booster = fit_ranker(features, labels, groups, ranker)
    serialized = ranker_to_onnx(booster)
    done()
    done = timed("small ranking model: distilled from the ranking model")
    small_booster = fit_small_ranker(features, booster, groups, ranker)
    small_serialized = ranker_to_onnx(small_booster, name="recsys_ranker_small")
    done()
    done = timed("served candidate sources: ALS and item neighbours on every training pair")
    served = fit_candidate_models(
        catalogue,
        table,
        settings.embedding,
        settings.neighbours,
        signals_of=item_signals,
        show_progress=show_progress,
    )
    done()
    generated_at = dt.datetime.now(dt.UTC)
    importance = dict(
        zip(booster.feature_name(), booster.feature_importance().tolist(), strict=True)
    )
    report: dict[str, Any] = {
        "users": table.user_count,
        "items": table.item_count,
        "training_pairs": len(table),
        "ranker_rows": len(labels),
        "ranker_groups": len(groups),
        "ranker_positive_share": round(float(labels.mean()), 4),
        "ranker_split_importance": dict(zip(RANKING_FEATURES, importance.values(), strict=True)),
        "embedding": asdict(settings.embedding),
        "neighbours": {
            **asdict(settings.neighbours),
            "method": served.neighbours.method,
            "layout": "dense" if served.neighbours.dense is not None else "top-k rows",
            "bytes": served.neighbours.nbytes,
        },
        "candidate_mix": asdict(settings.mix),
        "ranker": asdict(ranker),
        "tuning": tuning.as_dict() if tuning is not None else None,
        "seconds": timings,
    }
    return TrainedModels(
        table=table,
        embeddings=served.embeddings,
        signals=served.signals,
        ranker_onnx=serialized,
        embedding_version=embedding_version or default_embedding_version(generated_at),
        generated_at=generated_at,
        report=report,
        small_ranker_onnx=small_serialized,
        neighbours=served.neighbours,
        candidate_mix=settings.mix,
        popular_ids=served.popular_ids,
        neighbour_settings=settings.neighbours,
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
    # The neighbour store (`candidates.neighbours_path`), when one was built.
    neighbours_path: Path | None = None


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
    neighbours_path = None
    if models.neighbours is not None:
        neighbours_path = output / NEIGHBOURS_FILE
        # The mix the ranking model was trained on travels with the store: Recommend warns
        # when it serves another.
        parameters = {**models.neighbours.parameters, "candidate_mix": asdict(models.candidate_mix)}
        save_neighbours(neighbours_path, replace(models.neighbours, parameters=parameters))
    report_path = output / REPORT_FILE
    report = {
        **models.report,
        "embedding_version": models.embedding_version,
        "model_version": version,
        "model_folder": str(folder),
        "small_model_folder": str(small_folder) if small_folder else None,
        "embeddings": str(embeddings_path),
        "features": str(features_path),
        "neighbours_path": str(neighbours_path) if neighbours_path else None,
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
        neighbours_path,
    )
