"""The committed repository holds the small model of tiered ranking beside the full one: a
version Triton and the ONNX ranker can serve, and a configuration with the same tensors."""

from __future__ import annotations

import re
from pathlib import Path

from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.ranking.model_repository import ModelRepository
from recsys.settings import RankSettings

ROOT = Path(__file__).resolve().parents[2]


def tensors(config: str) -> str:
    """The input and output blocks of a config.pbtxt, as Triton reads the model's metadata."""
    found = re.search(r"^input \[.*?^\]\s*^output \[.*?^\]", config, re.MULTILINE | re.DOTALL)
    assert found is not None
    return found.group(0)


def test_the_committed_small_model_serves_version_one_with_the_full_models_tensors() -> None:
    name = RankSettings().small_model_name
    small = OnnxRanker(ModelRepository(ROOT / "triton_models", name))
    assert small.load().version == "1"
    assert small.model_version == f"{name}:1"
    models = ROOT / "triton_models"
    config = (models / name / "config.pbtxt").read_text()
    assert f'name: "{name}"' in config
    assert 'platform: "onnxruntime_onnx"' in config
    assert "kind: KIND_CPU" in config
    assert tensors(config) == tensors((models / "ranker" / "config.pbtxt").read_text())
