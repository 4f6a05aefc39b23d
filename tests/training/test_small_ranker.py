"""The small ranking model of tiered ranking: distilled from the full ranker, deterministic,
exported beside it under the same version number, and served by the ONNX ranker."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from scipy.stats import spearmanr

from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.data.synthetic import synthetic_catalogue
from recsys.domain.candidates import CandidateMix
from recsys.domain.ranking import RANKING_FEATURES
from recsys.ranking.model_repository import ModelRepository
from recsys.similarity.fit import NeighbourSettings
from recsys.training.candidates import fit_candidate_models, ranker_rows
from recsys.training.dataset import InteractionTable, random_split
from recsys.training.models import (
    EmbeddingSettings,
    RankerSettings,
    distillation_targets,
    fit_ranker,
    fit_small_ranker,
    next_model_version,
    ranker_to_onnx,
    write_model_version,
)
from recsys.training.pipeline import TrainedModels, item_signals, train_models, write_artifacts

SMALL = EmbeddingSettings(factors=16, regularization=5.0, iterations=5)
SETTINGS = RankerSettings(min_child_samples=20)


@pytest.fixture(scope="module")
def catalogue():  # type: ignore[no-untyped-def]
    return synthetic_catalogue(600, 300, interactions_per_user=25, category_count=8, seed=3)


@pytest.fixture(scope="module")
def rows(catalogue):  # type: ignore[no-untyped-def]
    table = InteractionTable.from_catalogue(catalogue)
    inner, held_out = random_split(table, train_ratio=0.75, seed=1)
    models = fit_candidate_models(
        catalogue, inner, SMALL, NeighbourSettings(), signals_of=item_signals
    )
    return ranker_rows(
        models,
        inner.items_by_user(),
        held_out.items_by_user(),
        CandidateMix(retrieval=50, neighbours=50, popularity=10),
    )


@pytest.fixture(scope="module")
def models(catalogue) -> TrainedModels:  # type: ignore[no-untyped-def]
    return train_models(catalogue, InteractionTable.from_catalogue(catalogue), embedding=SMALL)


def test_distillation_targets_are_centred_within_each_user() -> None:
    scores = np.array([1.0, 3.0, 10.0, 20.0, 30.0], np.float32)
    targets = distillation_targets(scores, [2, 3])
    np.testing.assert_allclose(targets, [-1.0, 1.0, -10.0, 0.0, 10.0])


def test_the_small_model_orders_candidates_as_the_full_model_does(rows) -> None:  # type: ignore[no-untyped-def]
    features, labels, groups = rows
    full = fit_ranker(features, labels, groups, SETTINGS)
    small = fit_small_ranker(features, full, groups, SETTINGS)
    assert small.num_trees() == SETTINGS.small_trees
    teacher, student = full.predict(features), small.predict(features)
    bounds = np.cumsum([0, *groups])
    agreement = [
        spearmanr(teacher[start:end], student[start:end]).statistic
        for start, end in itertools.pairwise(bounds)
        if np.ptp(teacher[start:end]) > 0
    ]
    assert np.nanmean(agreement) > 0.8
    # Seeded and single-threaded: the same rows give the same model, byte for byte.
    again = fit_small_ranker(features, full, groups, SETTINGS)
    assert ranker_to_onnx(again, name="s") == ranker_to_onnx(small, name="s")
    session = onnxruntime.InferenceSession(ranker_to_onnx(small, name="recsys_ranker_small"))
    (scores,) = session.run(["scores"], {"features": features})
    np.testing.assert_allclose(scores.ravel(), student, atol=1e-5)


def test_both_models_are_written_under_one_version_and_load(
    models: TrainedModels, tmp_path: Path
) -> None:
    assert models.small_ranker_onnx is not None
    assert models.small_ranker_onnx != models.ranker_onnx
    repository = tmp_path / "models"
    # The small model's folder is ahead (a run before it existed trained only the full one).
    write_model_version(repository / "ranker_small", "3", models.small_ranker_onnx)
    assert next_model_version(repository / "ranker", repository / "ranker_small") == "4"
    artifacts = write_artifacts(models, output=tmp_path / "out", model_repository=repository)
    assert artifacts.model_version == "4"
    assert artifacts.small_model_folder == repository / "ranker_small" / "4"
    report = json.loads(artifacts.report_path.read_text())
    assert report["small_model_folder"] == str(artifacts.small_model_folder)
    assert "small ranking model: distilled from the ranking model" in report["seconds"]

    small = OnnxRanker(ModelRepository(repository, "ranker_small"))
    small.load()
    assert small.model_version == "ranker_small:4"
    full = OnnxRanker(ModelRepository(repository, "ranker"))
    full.load()
    features = np.random.default_rng(0).random((30, len(RANKING_FEATURES)), np.float32)
    small_scores = asyncio.run(small.score(features, timeout=5.0))
    full_scores = asyncio.run(full.score(features, timeout=5.0))
    assert small_scores.shape == full_scores.shape == (30,)
    assert not np.array_equal(small_scores, full_scores)

    # A small version that exists refuses the run before anything is written.
    write_model_version(repository / "ranker_small", "5", models.small_ranker_onnx)
    with pytest.raises(FileExistsError, match="ranker_small"):
        write_artifacts(
            models, output=tmp_path / "refused", model_repository=repository, model_version="5"
        )
    assert not (tmp_path / "refused").exists()
    assert not (repository / "ranker" / "5").exists()
