"""Exact score ties on purpose: duplicate item vectors (ties inside a shard, across shards and
at the candidate cut-off) and a ranking model with coarse scores (ties among model scores).
The served list must equal the offline one, and both must follow the documented order:
score descending, then item id ascending."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from recsys.data.synthetic import synthetic_catalogue
from recsys.deploy.sample import prepare_deployment
from recsys.domain.ranking import RANKING_FEATURES
from recsys.domain.requests import RequestContext
from recsys.evaluation.evaluate import OfflineRecommender, served_lists, training_catalogue
from recsys.training.dataset import InteractionTable, random_split
from recsys.training.models import ONNX_OPSET, Embeddings, EmbeddingSettings
from recsys.training.pipeline import train_models

SMALL = EmbeddingSettings(factors=16, regularization=5.0, iterations=8)
CANDIDATES = 90  # not a multiple of the tie groups' size: a group straddles the cut-off


def coarse_ranker() -> bytes:
    """scores = floor(2 * candidate_score) / 2: many candidates share a model score."""
    width = len(RANKING_FEATURES)
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["features", "start", "end", "axis"], ["column"]),
            helper.make_node("Mul", ["column", "two"], ["doubled"]),
            helper.make_node("Floor", ["doubled"], ["floored"]),
            helper.make_node("Div", ["floored", "two"], ["scores"]),
        ],
        "coarse",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 1])],
        initializer=[
            helper.make_tensor("start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("end", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tie_group(item_rows: np.ndarray) -> np.ndarray:
    """Items of one group share a vector: 20 items of the same id parity in a block of 40 ids,
    so every group spans 5 shards with 4 items in each."""
    return (item_rows // 40) * 2 + item_rows % 2


@pytest.mark.e2e
async def test_tied_scores_are_ordered_by_item_id_on_both_paths(tmp_path: Path) -> None:
    catalogue = synthetic_catalogue(800, 60, interactions_per_user=25, category_count=8, seed=5)
    table = InteractionTable.from_catalogue(catalogue)
    train, _ = random_split(table, seed=3)
    models = train_models(catalogue, train, embedding=SMALL)
    rows = np.arange(models.table.item_count)
    assert np.array_equal(models.table.item_ids, rows)  # synthetic ids are 0..n-1
    groups = tie_group(rows)
    first_of_group = np.unique(groups, return_index=True)[1]
    vectors = models.embeddings.item_vectors[first_of_group][groups]
    models = dataclasses.replace(
        models,
        embeddings=Embeddings(models.embeddings.user_vectors, np.ascontiguousarray(vectors)),
        ranker_onnx=coarse_ranker(),
    )
    deployment = await prepare_deployment(
        training_catalogue(catalogue, models), models, tmp_path / "deployment"
    )
    offline = await OfflineRecommender.load(catalogue, models, deployment, CANDIDATES)
    try:
        users = list(models.table.user_ids)
        expected = {}
        straddled = tied_scores = 0
        for row, user in enumerate(users):
            ids, scores = await offline._candidates(row)
            assert len(ids) == CANDIDATES
            # Retrieval: rank order, and at the cut-off the lowest ids of the tied group.
            assert _in_rank_order(ids, scores)
            boundary = groups[ids[-1]]
            members = rows[groups == boundary]
            taken = np.intersect1d(members, ids)
            if len(taken) < len(members):
                straddled += 1
                assert np.array_equal(taken, members[: len(taken)])
            unseen = ~np.isin(ids, list(offline.seen[row]))
            scored = await offline.scorer.score(user, ids[unseen], scores[unseen], RequestContext())
            assert _in_rank_order(scored.item_ids, scored.scores)
            tied_scores += int(np.count_nonzero(np.diff(scored.scores) == 0))
            expected[user] = await offline.ranked(row, 10)
        # The test builds ties on purpose: make sure it met them.
        assert straddled > 0
        assert tied_scores > 0
        served, degraded = await served_lists(deployment, users, k=10, candidates=CANDIDATES)
    finally:
        await offline.close()
    assert degraded == 0
    assert served == expected


def _in_rank_order(item_ids: np.ndarray, scores: np.ndarray) -> bool:
    """Score descending, and item id ascending among equal scores."""
    higher = scores[:-1] > scores[1:]
    tied = (scores[:-1] == scores[1:]) & (item_ids[:-1] < item_ids[1:])
    return bool(np.all(higher | tied))
