"""A small reference ranking model written straight to ONNX (no training framework needed):
a logistic score over the ranking features with fixed, sensible weights. The training job
replaces it with a learned model of the same schema; tests and the embedded default use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from recsys.domain.ranking import RANKING_FEATURES
from recsys.ranking.model_repository import MODEL_FILE, SCHEMA_FILE, FeatureSchema, write_schema

# Personalisation dominates; popularity, freshness and affinity break ties.
REFERENCE_WEIGHTS = {
    "candidate_score": 2.0,
    "user_item_dot": 3.0,
    "item_popularity": 1.0,
    "item_freshness": 0.5,
    "category_affinity": 1.0,
}
OPSET = 17


def reference_model(
    weights: dict[str, float] | None = None,
    bias: float = -1.0,
    features: tuple[str, ...] = RANKING_FEATURES,
) -> onnx.ModelProto:
    """scores[n, 1] = sigmoid(features[n, F] @ W + b) over the named `features` in their
    order, with a dynamic batch dimension."""
    chosen = weights or REFERENCE_WEIGHTS
    vector = np.array([[chosen.get(name, 0.0)] for name in features], dtype=np.float32)
    count = len(features)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["features", "weights"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["scores"]),
        ],
        name="recsys_reference_ranker",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", count])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(vector, "weights"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "bias"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="recsys"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_reference_version(
    model_folder: Path,
    version: str,
    *,
    weights: dict[str, float] | None = None,
    features: tuple[str, ...] = RANKING_FEATURES,
) -> Path:
    """Writes `<model_folder>/<version>/model.onnx` and its feature schema."""
    folder = model_folder / version
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(reference_model(weights, features=features), folder / MODEL_FILE)
    write_schema(folder / SCHEMA_FILE, FeatureSchema(features=features))
    return folder
