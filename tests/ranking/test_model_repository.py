"""The model repository: schemas versioned with the model, refusal, hot reload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.domain.ranking import RANKING_FEATURES
from recsys.errors import FailedPrecondition
from recsys.ranking.model_repository import SCHEMA_FILE, ModelRepository, SchemaMismatch
from recsys.ranking.reference_model import write_reference_version

ROOT = Path(__file__).resolve().parents[2]
FEATURES = np.random.default_rng(1).random((50, len(RANKING_FEATURES)), np.float32)


def test_the_committed_repository_serves_version_one() -> None:
    ranker = OnnxRanker(ModelRepository(ROOT / "triton_models"))
    assert ranker.load().version == "1"
    assert ranker.model_version == "ranker:1"
    config = (ROOT / "triton_models" / "ranker" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config
    # Each version's width is its schema's: version 1 predates the candidate-source features.
    assert "dims: [ -1 ]" in config
    assert len(RANKING_FEATURES) == 17
    assert (
        ModelRepository(ROOT / "triton_models").read("1").schema.features == (RANKING_FEATURES[:12])
    )


@pytest.mark.parametrize(
    "features",
    [(*RANKING_FEATURES, "extra"), (*RANKING_FEATURES[:3], RANKING_FEATURES[0])],
    ids=["unknown", "repeated"],
)
def test_schema_mismatch_is_refused(tmp_path: Path, features: tuple[str, ...]) -> None:
    write_reference_version(tmp_path / "ranker", "1", features=features)
    with pytest.raises(SchemaMismatch):
        ModelRepository(tmp_path).read("1")


async def test_a_model_reads_the_columns_its_schema_names_in_its_order(tmp_path: Path) -> None:
    # The same named weights over the features in another order and over a subset: the Rank
    # service's full matrix is projected onto each schema, so the scores agree.
    weights = {"candidate_score": 2.0, "item_popularity": -1.0, "neighbour_score": 3.0}
    write_reference_version(tmp_path / "ranker", "1", weights=weights)
    write_reference_version(
        tmp_path / "reversed", "1", features=tuple(reversed(RANKING_FEATURES)), weights=weights
    )
    subset = ("neighbour_score", "item_popularity", "candidate_score")
    write_reference_version(tmp_path / "subset", "1", features=subset, weights=weights)
    scores = []
    for name in ("ranker", "reversed", "subset"):
        ranker = OnnxRanker(ModelRepository(tmp_path, name))
        ranker.load()
        scores.append(await ranker.score(FEATURES, timeout=5))
    np.testing.assert_allclose(scores[0], scores[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores[0], scores[2], rtol=0, atol=1e-6)


def test_startup_serves_the_newest_valid_version(tmp_path: Path) -> None:
    write_reference_version(tmp_path / "ranker", "1")
    write_reference_version(tmp_path / "ranker", "2", features=(*RANKING_FEATURES[:5], "extra"))
    ranker = OnnxRanker(ModelRepository(tmp_path))
    assert ranker.load().version == "1"
    (tmp_path / "ranker" / "1" / SCHEMA_FILE).unlink()
    with pytest.raises(FailedPrecondition):
        OnnxRanker(ModelRepository(tmp_path)).load()


async def test_hot_reload_swaps_valid_versions_and_keeps_serving(tmp_path: Path) -> None:
    write_reference_version(tmp_path / "ranker", "1")
    ranker = OnnxRanker(ModelRepository(tmp_path))
    ranker.load()
    before = await ranker.score(FEATURES, timeout=5)
    failures: list[Exception] = []
    versions: list[str] = []
    stop = asyncio.Event()

    async def scorer() -> None:
        while not stop.is_set():
            try:
                versions.append(ranker.model_version)
                scores = await ranker.score(FEATURES, timeout=5)
                assert scores.shape == (50,)
            except Exception as error:
                failures.append(error)

    tasks = [asyncio.create_task(scorer()) for _ in range(8)]
    try:
        write_reference_version(tmp_path / "ranker", "2", weights={"item_popularity": 5.0})
        assert await ranker.reload()
        # A broken version 3: garbage model bytes. Refused; version 2 stays.
        folder = write_reference_version(tmp_path / "ranker", "3")
        (folder / "model.onnx").write_bytes(b"not an onnx model")
        assert not await ranker.reload()
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert failures == []
    assert ranker.model_version == "ranker:2"
    assert {"ranker:1", "ranker:2"} <= set(versions)
    after = await ranker.score(FEATURES, timeout=5)
    assert not np.allclose(before, after)  # the new weights are really in use


def test_schema_file_is_json_with_the_feature_order(tmp_path: Path) -> None:
    folder = write_reference_version(tmp_path / "ranker", "4")
    schema = json.loads((folder / SCHEMA_FILE).read_text())
    assert schema["features"] == list(RANKING_FEATURES)
    assert (schema["input_name"], schema["output_name"]) == ("features", "scores")
