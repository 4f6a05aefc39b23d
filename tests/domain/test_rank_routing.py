"""Tiered ranking's policy and chain (pure logic, scripted models)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.domain.circuit_breaker import BreakerState, CircuitBreaker
from recsys.domain.rank_routing import (
    ACTIVITY_COLUMN,
    RoutingPolicy,
    Tier,
    TieredRankingChain,
    user_activity,
)
from recsys.domain.ranking import RANKING_FEATURES, Backend
from recsys.errors import FailedPrecondition, Unavailable
from recsys.ports.ranker import Ranker


def features(*dots: float) -> np.ndarray:
    """A request's matrix whose user_item_dot column holds `dots`; the candidate scores
    descend, so the rule formula's order is known."""
    matrix = np.zeros((len(dots), len(RANKING_FEATURES)), np.float32)
    matrix[:, ACTIVITY_COLUMN] = dots
    matrix[:, 0] = np.linspace(1.0, 0.0, len(dots))
    return matrix


ENGAGED = features(0.4, 0.2, 0.3)  # activity 0.3
CASUAL = features(0.1, -0.1, 0.0)  # activity 0.0


def test_activity_is_the_mean_affinity_over_the_candidates() -> None:
    assert user_activity(ENGAGED) == pytest.approx(0.3)
    assert user_activity(features(-0.5, -0.1)) == 0.0  # negative: clamped
    assert user_activity(features()) == 0.0  # no candidates
    assert user_activity(features(float("nan"), 1.0)) == 0.0  # unusable: the cheap tier


@pytest.mark.parametrize(
    ("threshold", "matrix", "tier"),
    [
        (0.3, ENGAGED, Tier.FULL),  # at the threshold: full
        (0.31, ENGAGED, Tier.SMALL),
        (0.0, CASUAL, Tier.FULL),  # threshold 0: everyone on the full model
        (0.05, CASUAL, Tier.SMALL),
        (0.05, features(), Tier.SMALL),
    ],
)
def test_policy_sends_users_at_or_above_the_threshold_to_the_full_model(
    threshold: float, matrix: np.ndarray, tier: Tier
) -> None:
    assert RoutingPolicy(threshold).tier_of(matrix) is tier


@pytest.mark.parametrize("threshold", [-0.1, float("nan"), float("inf")])
def test_policy_refuses_a_threshold_that_routes_nothing_sensibly(threshold: float) -> None:
    with pytest.raises(ValueError, match="full_model_min_activity"):
        RoutingPolicy(threshold)


class Scripted(Ranker):
    def __init__(self, version: str, errors: list[Exception | None] | None = None) -> None:
        self.version, self.errors, self.calls = version, list(errors or []), 0

    @property
    def model_version(self) -> str:
        return self.version

    async def score(self, features: np.ndarray, *, timeout: float) -> np.ndarray:
        self.calls += 1
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        return np.arange(len(features), dtype=np.float32)  # the reverse of the rule's order


def tiered(
    full: Ranker, small: Ranker, cpu: Ranker | None = None, routed: list[str] | None = None
) -> TieredRankingChain:
    breaker = CircuitBreaker("model", failure_threshold=3, open_seconds=60, chance=lambda: 0.99)
    return TieredRankingChain(
        full,
        small,
        RoutingPolicy(0.25),
        breaker=breaker,
        cpu_model=cpu,
        on_route=None if routed is None else routed.append,
    )


async def test_each_request_goes_whole_to_its_tiers_model_and_says_which() -> None:
    full, small = Scripted("ranker:3"), Scripted("ranker_small:3")
    routed: list[str] = []
    chain = tiered(full, small, routed=routed)
    engaged = await chain.rank(ENGAGED)
    casual = await chain.rank(CASUAL)
    assert (engaged.backend, engaged.model_version) == (Backend.MODEL, "ranker:3")
    assert (casual.backend, casual.model_version) == (Backend.MODEL, "ranker_small:3")
    assert casual.scores.tolist() == [0.0, 1.0, 2.0]  # the small model's scores, every row
    assert (full.calls, small.calls) == (1, 1)
    assert routed == ["full", "small"]


async def test_small_tier_successes_do_not_keep_a_failing_full_model_in_service() -> None:
    """Casual requests between the failures must not reset the breaker's failure run."""
    full = Scripted("ranker:3", [Unavailable("triton down")] * 10)
    small, cpu = Scripted("ranker_small:3"), Scripted("ranker:3-cpu")
    chain = tiered(full, small, cpu)
    outcomes = []
    for _ in range(3):
        outcomes.append(await chain.rank(ENGAGED))
        assert (await chain.rank(CASUAL)).model_version == "ranker_small:3"
    assert chain.breaker.state is BreakerState.OPEN
    assert [o.backend for o in outcomes] == [Backend.CPU_MODEL] * 3
    # Open: engaged users get the CPU copy of the full model without calling it.
    assert (await chain.rank(ENGAGED)).model_version == "ranker:3-cpu"
    assert full.calls == 3
    # Casual users never touch the full model, open breaker or not.
    assert (await chain.rank(CASUAL)).model_version == "ranker_small:3"
    assert small.calls == 4
    assert cpu.calls == 4


async def test_a_failing_small_model_falls_back_to_the_rule_without_the_breaker() -> None:
    full = Scripted("ranker:3")
    small = Scripted("ranker_small:3", [FailedPrecondition("schema")] + [Unavailable("x")] * 5)
    chain = tiered(full, small, Scripted("cpu"))
    for _ in range(6):
        outcome = await chain.rank(CASUAL)
        assert (outcome.backend, outcome.model_version) == (Backend.RULE_FALLBACK, "")
        assert np.argmax(outcome.scores) == 0  # highest candidate score wins under the rule
    assert chain.breaker.state is BreakerState.CLOSED
    assert full.calls == 0
    assert (await chain.rank(ENGAGED)).model_version == "ranker:3"
