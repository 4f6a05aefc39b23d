"""Feature assembly, the rule formula and the backend chain (pure logic, scripted backends)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recsys.domain.circuit_breaker import BreakerState, CircuitBreaker
from recsys.domain.ranking import (
    RANKING_FEATURES,
    Backend,
    RankingChain,
    RankingInputs,
    assemble_features,
    rule_scores,
)
from recsys.domain.requests import DeviceType
from recsys.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from recsys.ports.ranker import Ranker


def inputs(count: int = 4) -> RankingInputs:
    rng = np.random.default_rng(0)
    return RankingInputs(
        candidate_scores=np.linspace(0.9, 0.6, count).astype(np.float32),
        popularity=rng.random(count).astype(np.float32),
        freshness=rng.random(count).astype(np.float32),
        category_affinity=np.zeros(count, np.float32),
        item_vectors=rng.normal(size=(count, 3)).astype(np.float32),
        user_vector=np.array([1.0, 0.0, 2.0], np.float32),
        request_time=dt.datetime(2026, 11, 29, 18, 0, tzinfo=dt.UTC),
        device_type=DeviceType.MOBILE,
    )


def test_feature_columns() -> None:
    data = inputs()
    matrix = assemble_features(data)
    assert matrix.shape == (4, len(RANKING_FEATURES))
    assert matrix.dtype == np.float32
    column = {name: matrix[:, index] for index, name in enumerate(RANKING_FEATURES)}
    np.testing.assert_allclose(column["candidate_score"], data.candidate_scores)
    np.testing.assert_allclose(
        column["user_item_dot"], data.item_vectors @ data.user_vector, rtol=1e-6
    )
    np.testing.assert_allclose(column["item_popularity"], data.popularity)
    assert np.allclose(column["hour_sin"], np.sin(2 * np.pi * 18 / 24))
    assert column["device_mobile"].tolist() == [1, 1, 1, 1]
    assert column["device_web"].tolist() == [0, 0, 0, 0]


def test_rule_formula_on_normalised_inputs() -> None:
    features = np.zeros((3, len(RANKING_FEATURES)), np.float32)
    features[:, 0] = [10.0, 20.0, 30.0]  # candidate scores -> 0, 0.5, 1
    features[:, 2] = [1.0, 0.0, 0.5]  # popularity -> 1, 0, 0.5
    features[:, 3] = [0.2, 0.2, 0.2]  # constant freshness -> 0
    np.testing.assert_allclose(rule_scores(features), [0.3, 0.25, 0.65], rtol=1e-6)
    assert rule_scores(features[:0]).shape == (0,)


class Scripted(Ranker):
    def __init__(self, version: str, errors: list[Exception | None]) -> None:
        self.version, self.errors, self.calls = version, errors, 0

    @property
    def model_version(self) -> str:
        return self.version

    async def score(self, features: np.ndarray, *, timeout: float) -> np.ndarray:
        self.calls += 1
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        return np.full(len(features), 0.5, np.float32)


def chain(primary: Ranker, cpu: Ranker | None) -> RankingChain:
    breaker = CircuitBreaker("model", failure_threshold=5, open_seconds=60, chance=lambda: 0.99)
    return RankingChain(primary, breaker=breaker, cpu_model=cpu)


async def test_breaker_opens_after_five_failures_and_the_cpu_model_answers() -> None:
    primary = Scripted("gpu:3", [Unavailable("down")] * 4 + [DeadlineExceeded("slow")] * 10)
    cpu = Scripted("cpu:3", [])
    ranking = chain(primary, cpu)
    features = assemble_features(inputs())
    outcomes = [await ranking.rank(features) for _ in range(8)]
    assert [o.backend for o in outcomes] == [Backend.CPU_MODEL] * 8
    assert primary.calls == 5  # open after the fifth failure: calls 6-8 never reach it
    assert ranking.breaker.state is BreakerState.OPEN
    assert outcomes[0].model_version == "cpu:3"


async def test_rule_fallback_without_a_cpu_model() -> None:
    ranking = chain(Scripted("gpu:3", [Unavailable("down")]), None)
    outcome = await ranking.rank(assemble_features(inputs()))
    assert outcome.backend is Backend.RULE_FALLBACK
    assert outcome.model_version == ""
    assert np.argmax(outcome.scores) == 0  # highest candidate score wins under the rule


async def test_refused_inputs_do_not_count_against_the_model() -> None:
    primary = Scripted("gpu:3", [FailedPrecondition("schema")] * 7)
    ranking = chain(primary, None)
    for _ in range(7):
        assert (await ranking.rank(assemble_features(inputs()))).backend is Backend.RULE_FALLBACK
    assert ranking.breaker.state is BreakerState.CLOSED
    assert (await ranking.rank(assemble_features(inputs()))).backend is Backend.MODEL


@pytest.mark.parametrize("count", [1, 1000])
def test_assembly_is_vectorised_for_any_batch(count: int) -> None:
    assert assemble_features(inputs(count)).shape == (count, len(RANKING_FEATURES))


class Features:
    """Item features for the ids in `known` only (an empty or partly loaded store)."""

    def __init__(self, known: set[int]) -> None:
        self.known = known

    async def get_user_features(self, user_id: str):  # type: ignore[no-untyped-def]
        from recsys.ports.features import UserFeatures

        return UserFeatures(None, {}, ())

    async def get_item_features(self, item_ids):  # type: ignore[no-untyped-def]
        from recsys.ports.features import ItemFeatures, batch_from

        return batch_from(
            [ItemFeatures("drama", 0.5, 0.5) if item in self.known else None for item in item_ids]
        )


@pytest.mark.parametrize(("known", "flagged"), [({1, 2, 3}, False), ({1, 3}, True), (set(), True)])
async def test_candidates_without_features_are_scored_as_defaults_and_flagged(
    known: set[int], flagged: bool
) -> None:
    from recsys.domain.requests import RequestContext
    from recsys.domain.scoring import CandidateScorer

    scorer = CandidateScorer(
        chain(Scripted("m1", []), None),
        Features(known),  # type: ignore[arg-type]
        feature_timeout_seconds=1.0,
    )
    scored = await scorer.score(
        "u1", np.array([1, 2, 3], np.int64), np.ones(3, np.float32), RequestContext()
    )
    assert scored.default_features is flagged
    assert scored.item_ids.tolist() == [1, 2, 3]  # tied scores: item id order
