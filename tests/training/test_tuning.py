"""`recsys train --tune`: settings chosen from the grid on a validation split carved from the
training table only."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest

from recsys.data.catalogue import Catalogue
from recsys.data.synthetic import synthetic_catalogue
from recsys.domain.candidates import CandidateMix
from recsys.similarity.fit import NeighbourSettings
from recsys.training.dataset import InteractionTable, random_split
from recsys.training.models import EmbeddingSettings, ItemSignals, RankerSettings
from recsys.training.pipeline import item_signals, train_models
from recsys.training.tuning import TrainingSettings, TuningGrid, ndcg, tune

RANKER = RankerSettings(trees=20, min_child_samples=20, folds=2, max_users=60)
GRID = TuningGrid(
    factors=(8,),
    regularization=(5.0, 20.0),
    iterations=(5,),
    bm25_b=(0.8,),
    ease_lambda=(50.0, 500.0),
    mixes=(
        CandidateMix(retrieval=30, neighbours=30, popularity=0),
        CandidateMix(retrieval=20, neighbours=20, popularity=10),
    ),
    rankers=(
        RANKER,
        RankerSettings(trees=10, leaves=4, min_child_samples=20, folds=2, max_users=60),
    ),
    holdout_ratios=(0.15, 0.25),
    max_users=60,
)
START = TrainingSettings(
    embedding=EmbeddingSettings(factors=8, iterations=5),
    neighbours=NeighbourSettings(),
    mix=CandidateMix(retrieval=30, neighbours=30),
    ranker=RANKER,
)
STEPS = (
    "als_factors_regularization",
    "als_iterations_weighting",
    "ease_lambda",
    "candidate_mix",
    "ranker",
    "ranker_holdout_ratio",
)


def pairs(table: InteractionTable) -> set[tuple[str, int]]:
    return {
        (table.user_ids[user], int(table.item_ids[item]))
        for user, item in zip(table.user_rows.tolist(), table.item_rows.tolist(), strict=True)
    }


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return synthetic_catalogue(300, 120, interactions_per_user=20, category_count=6, seed=5)


def test_ndcg_against_a_hand_computed_value() -> None:
    lists = [np.array([1, 2, 3]), np.array([5, 6]), np.array([7])]
    relevant = [{2, 5}, {5}, {9}]
    first = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg(lists, relevant) == pytest.approx((first + 1.0 + 0.0) / 3)
    # Only the first k count.
    assert ndcg([np.array([4, 2])], [{2}], k=1) == 0.0
    assert ndcg([], []) == 0.0


def test_tune_chooses_from_the_grid_on_the_training_table_only(catalogue: Catalogue) -> None:
    table = InteractionTable.from_catalogue(catalogue)
    training, test = random_split(table, train_ratio=0.8, seed=3)
    given: list[InteractionTable] = []
    made: list[tuple[InteractionTable, InteractionTable]] = []
    signal_tables: list[InteractionTable] = []

    def split(part: InteractionTable) -> tuple[InteractionTable, InteractionTable]:
        given.append(part)
        made.append(random_split(part, train_ratio=0.8, seed=9))
        return made[-1]

    def signals_of(catalogue: Catalogue, part: InteractionTable) -> ItemSignals:
        signal_tables.append(part)
        return item_signals(catalogue, part)

    messages: list[str] = []
    report = tune(
        catalogue, training, split, signals_of=signals_of, start=START, grid=GRID,
        step=messages.append,
    )  # fmt: skip
    assert given == [training]
    fit, valid = made[0]
    assert not pairs(valid) & pairs(test)
    assert pairs(valid) | pairs(fit) == pairs(training)
    assert signal_tables
    assert all(pairs(part) <= pairs(fit) for part in signal_tables)
    assert report.validation_pairs == len(valid)
    assert 0 < report.validation_users <= GRID.max_users

    chosen = report.chosen
    assert chosen.embedding.factors in GRID.factors
    assert chosen.embedding.regularization in GRID.regularization
    assert chosen.embedding.iterations in GRID.iterations
    assert chosen.embedding.bm25_b in GRID.bm25_b
    assert chosen.neighbours.ease_lambda in GRID.ease_lambda
    assert chosen.mix in GRID.mixes
    assert chosen.ranker.holdout_ratio in GRID.holdout_ratios
    rankers = [asdict(option) | {"holdout_ratio": 0} for option in GRID.rankers]
    assert asdict(chosen.ranker) | {"holdout_ratio": 0} in rankers

    sizes = {
        "als_factors_regularization": 2,
        "als_iterations_weighting": 1,
        "ease_lambda": 2,
        "candidate_mix": 2,
        "ranker": 2,
        "ranker_holdout_ratio": 2,
    }
    assert tuple(report.trials) == STEPS
    for step, results in report.trials.items():
        assert len(results) == sizes[step]
        assert all(0.0 <= score <= 1.0 for _, score in results)
    # The best of each step is the one kept (the first of equal scores).
    lambdas = report.trials["ease_lambda"]
    best = max(range(len(lambdas)), key=lambda index: lambdas[index][1])
    assert chosen.neighbours.ease_lambda == lambdas[best][0]["ease_lambda"]
    assert report.trials["ease_lambda"][0][0]["ease_lambda"] == 50.0
    assert len(messages) == sum(sizes.values())
    as_dict = report.as_dict()
    assert as_dict["chosen"]["mix"] == asdict(chosen.mix)
    assert set(as_dict["validation_ndcg_at_10"]) == set(STEPS)


def test_train_models_reports_the_tuning(catalogue: Catalogue) -> None:
    table = InteractionTable.from_catalogue(catalogue)
    grid = TuningGrid(
        factors=(8,),
        regularization=(5.0,),
        iterations=(5,),
        bm25_b=(0.8,),
        ease_lambda=(100.0, 400.0),
        mixes=(CandidateMix(retrieval=25, neighbours=25, popularity=0),),
        rankers=(RANKER,),
        holdout_ratios=(0.2,),
        max_users=50,
    )
    models = train_models(
        catalogue,
        table,
        embedding=START.embedding,
        ranker=RANKER,
        mix=START.mix,
        tune_split=lambda part: random_split(part, train_ratio=0.8, seed=2),
        tuning_grid=grid,
    )
    tuning = models.report["tuning"]
    assert tuning is not None
    chosen = tuning["chosen"]
    assert chosen["mix"] == asdict(grid.mixes[0])
    assert chosen["ranker"]["holdout_ratio"] == 0.2
    assert chosen["neighbours"]["ease_lambda"] in grid.ease_lambda
    assert chosen["embedding"]["regularization"] == 5.0
    # What was trained is what tuning chose.
    assert models.report["candidate_mix"] == chosen["mix"]
    assert models.report["neighbours"]["ease_lambda"] == chosen["neighbours"]["ease_lambda"]
    assert models.report["ranker"] == chosen["ranker"]
    assert models.candidate_mix == grid.mixes[0]
    assert models.neighbour_settings.ease_lambda == chosen["neighbours"]["ease_lambda"]
    assert set(tuning["validation_ndcg_at_10"]) == set(STEPS)
    assert "tuning on a validation split of the training data" in models.report["seconds"]
