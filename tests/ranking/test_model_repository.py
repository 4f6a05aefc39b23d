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
    assert "dims: [ 12 ]" in config
    assert len(RANKING_FEATURES) == 12


@pytest.mark.parametrize(
    "features",
    [RANKING_FEATURES[:-1], tuple(reversed(RANKING_FEATURES)), (*RANKING_FEATURES, "extra")],
    ids=["missing", "reordered", "extra"],
)
def test_schema_mismatch_is_refused(tmp_path: Path, features: tuple[str, ...]) -> None:
    write_reference_version(tmp_path / "ranker", "1", features=features)
    with pytest.raises(SchemaMismatch):
        ModelRepository(tmp_path).read("1")


def test_startup_serves_the_newest_valid_version(tmp_path: Path) -> None:
    write_reference_version(tmp_path / "ranker", "1")
    write_reference_version(tmp_path / "ranker", "2", features=RANKING_FEATURES[:5])
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
