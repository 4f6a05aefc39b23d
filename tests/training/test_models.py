"""Training on a small synthetic catalogue: embeddings, the ranker, its ONNX export and the
files the platform serves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.data.features_file import load_features
from recsys.data.synthetic import synthetic_catalogue
from recsys.domain.candidates import CandidateMix
from recsys.domain.ranking import RANKING_FEATURES, RankingInputs, assemble_features
from recsys.domain.requests import DeviceType
from recsys.index.embeddings_file import load_embeddings
from recsys.ranking.model_repository import ModelRepository
from recsys.similarity.fit import NeighbourSettings
from recsys.similarity.neighbours import load_neighbours
from recsys.training.candidates import (
    CandidateModels,
    fit_candidate_models,
    pool_features,
    ranker_rows,
    user_pool,
)
from recsys.training.dataset import InteractionTable, random_split
from recsys.training.models import (
    EmbeddingSettings,
    RankerSettings,
    fit_embeddings,
    fit_ranker,
    next_model_version,
    ranker_to_onnx,
    write_model_version,
)
from recsys.training.pipeline import item_signals, train_models, write_artifacts

SMALL = EmbeddingSettings(factors=16, regularization=5.0, iterations=5)
MIX = CandidateMix(retrieval=50, neighbours=50, popularity=10)


@pytest.fixture(scope="module")
def catalogue():  # type: ignore[no-untyped-def]
    return synthetic_catalogue(600, 300, interactions_per_user=25, category_count=8, seed=3)


@pytest.fixture(scope="module")
def table(catalogue) -> InteractionTable:  # type: ignore[no-untyped-def]
    return InteractionTable.from_catalogue(catalogue)


@pytest.fixture(scope="module")
def inner_and_held_out(catalogue, table: InteractionTable):  # type: ignore[no-untyped-def]
    """Candidate sources fitted on three quarters of each user's pairs, and the rest."""
    inner, held_out = random_split(table, train_ratio=0.75, seed=1)
    models = fit_candidate_models(
        catalogue, inner, SMALL, NeighbourSettings(), signals_of=item_signals
    )
    return models, held_out


def test_embeddings_have_a_row_per_user_and_item(table: InteractionTable) -> None:
    embeddings = fit_embeddings(table.matrix(), SMALL)
    assert embeddings.user_vectors.shape == (table.user_count, 16)
    assert embeddings.item_vectors.shape == (table.item_count, 16)
    assert embeddings.user_vectors.dtype == np.float32
    # Learned, not random: a user's own items score above the catalogue's average.
    scores = embeddings.user_vectors @ embeddings.item_vectors.T
    own = np.mean([scores[row, items].mean() for row, items in enumerate(table.items_by_user())])
    assert own > scores.mean() + 0.1


def test_onnx_export_scores_as_lightgbm_does(inner_and_held_out) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime

    models, held_out = inner_and_held_out
    features, labels, groups = ranker_rows(
        models, models.table.items_by_user(), held_out.items_by_user(), MIX
    )
    assert features.shape == (sum(groups), len(RANKING_FEATURES))
    assert 0 < labels.mean() < 1
    booster = fit_ranker(features, labels, groups, RankerSettings(min_child_samples=20))
    session = onnxruntime.InferenceSession(ranker_to_onnx(booster))
    (scores,) = session.run(["scores"], {"features": features})
    assert scores.shape == (len(features), 1)
    np.testing.assert_allclose(scores.ravel(), booster.predict(features), atol=1e-5)


def test_written_artifacts_serve_through_the_onnx_ranker(  # type: ignore[no-untyped-def]
    catalogue,
    table: InteractionTable,
    tmp_path: Path,
) -> None:
    models = train_models(catalogue, table, embedding=SMALL, embedding_version="als-test")
    assert models.report["tuning"] is None  # no tuning split given
    repository = tmp_path / "models"
    write_model_version(repository / "ranker", "1", models.ranker_onnx)  # an older version
    artifacts = write_artifacts(models, output=tmp_path / "out", model_repository=repository)
    assert artifacts.model_version == "2"
    assert next_model_version(repository / "ranker") == "3"
    with pytest.raises(FileExistsError):
        write_model_version(repository / "ranker", "2", models.ranker_onnx)
    # A version that exists is refused before anything is written.
    with pytest.raises(FileExistsError):
        write_artifacts(
            models, output=tmp_path / "refused", model_repository=repository, model_version="1"
        )
    assert not (tmp_path / "refused").exists()

    # The neighbour store the neighbours candidate source serves, beside the embeddings.
    assert artifacts.neighbours_path == tmp_path / "out" / "item_neighbours.npz"
    neighbours = load_neighbours(artifacts.neighbours_path)
    assert models.neighbours is not None
    assert np.array_equal(neighbours.item_ids, table.item_ids)
    assert neighbours.method == models.neighbours.method

    embeddings = load_embeddings(artifacts.embeddings_path)
    assert embeddings.embedding_version == "als-test"
    assert np.array_equal(embeddings.item_ids, table.item_ids)
    snapshot = load_features(artifacts.features_path)
    assert snapshot.user_ids == table.user_ids
    assert snapshot.embedding_version == "als-test"
    np.testing.assert_allclose(
        snapshot.default_user_vector, snapshot.user_vectors.mean(axis=0), rtol=1e-5
    )

    ranker = OnnxRanker(ModelRepository(repository, "ranker"))
    ranker.load()
    assert ranker.model_version == "ranker:2"
    user_vector = snapshot.user_vectors[0]

    def features_at(hour: int, device: DeviceType) -> np.ndarray:
        return assemble_features(
            RankingInputs(
                candidate_scores=snapshot.item_vectors[:40] @ user_vector,
                popularity=snapshot.item_popularity[:40],
                freshness=snapshot.item_freshness[:40],
                category_affinity=np.linspace(0, 1, 40, dtype=np.float32),
                item_vectors=snapshot.item_vectors[:40],
                user_vector=user_vector,
                request_time=dt.datetime(2026, 5, 1, hour, tzinfo=dt.UTC),
                device_type=device,
            )
        )

    morning = await_scores(ranker, features_at(8, DeviceType.MOBILE))
    evening = await_scores(ranker, features_at(21, DeviceType.TV))
    # The catalogue carries no request context: the model must not depend on it.
    np.testing.assert_array_equal(morning, evening)
    assert len(np.unique(morning)) > 1


def await_scores(ranker: OnnxRanker, features: np.ndarray) -> np.ndarray:
    import asyncio

    return asyncio.run(ranker.score(features, timeout=5.0))


def test_ranker_rows_sample_at_most_max_users(inner_and_held_out) -> None:  # type: ignore[no-untyped-def]
    models: CandidateModels = inner_and_held_out[0]
    seen, held = models.table.items_by_user(), inner_and_held_out[1].items_by_user()
    every_features, every_labels, every = ranker_rows(models, seen, held, MIX)
    # The same inputs give the same rows, byte for byte.
    again_features, again_labels, again = ranker_rows(models, seen, held, MIX)
    assert again == every
    assert again_features.tobytes() == every_features.tobytes()
    assert again_labels.tobytes() == every_labels.tobytes()
    # Blocks of users scored by one matrix product give the rows of one user at a time.
    one_by_one = [
        pool_features(models, row, user_pool(models, row, seen[row], MIX), len(seen[row]))
        for row in range(models.table.user_count)
        if np.isin(
            user_pool(models, row, seen[row], MIX).item_ids, models.table.item_ids[held[row]]
        ).any()
    ]
    assert [len(rows) for rows in one_by_one] == every
    np.testing.assert_allclose(np.concatenate(one_by_one), every_features, rtol=1e-5, atol=1e-6)
    _, _, sampled = ranker_rows(models, seen, held, MIX, max_users=40, seed=2)
    assert len(every) > 40
    assert 0 < len(sampled) <= 40
    _, _, resampled = ranker_rows(models, seen, held, MIX, max_users=40, seed=3)
    assert resampled != sampled
