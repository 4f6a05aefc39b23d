"""Tiered ranking by user value (seed cost strategy "Model Distillation"): the full model for
engaged users, a small distilled CPU model for the rest.

The tier is decided per request, never per item: all rows of a request belong to one user. The
user's value is read from the feature matrix the scorer already assembles, so the Ranker port
needs no new input: the mean `user_item_dot` over the candidates. Under BM25-weighted ALS a
user's vector leans further into the catalogue's common directions the more the user has
interacted, so over a whole candidate list this mean tracks activity (Spearman 0.96 with
training interaction counts on ML-100K, docs/ranking.md "Tiered ranking"; the best single
candidate's dot only 0.27). A user without an embedding has 0 and gets the small model, where
the full model has nothing personal to add.

`TieredRankingChain` keeps the full model's circuit breaker about the full model alone: a
small-tier request never calls it, never counts as its success (which would reset the run of
consecutive failures that opens the breaker) and never reaches the CPU fallback.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.deadlines import outbound_timeout
from recsys.domain.circuit_breaker import CircuitBreaker
from recsys.domain.observers import RankingObserver
from recsys.domain.ranking import (
    RANKING_FEATURES,
    Backend,
    RankingChain,
    RankingOutcome,
    rule_scores,
)
from recsys.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable
from recsys.ports.ranker import Ranker

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

ACTIVITY_COLUMN = RANKING_FEATURES.index("user_item_dot")


class Tier(enum.StrEnum):
    FULL = "full"
    SMALL = "small"


def user_activity(features: FloatArray) -> float:
    """The user's value signal: the mean user-item affinity over the candidates (0 for no
    candidates or no embedding; negative means clamp to 0)."""
    if not len(features):
        return 0.0
    value = float(features[:, ACTIVITY_COLUMN].mean(dtype=np.float64))
    return max(value, 0.0) if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class RoutingPolicy:
    """Users whose activity reaches `full_model_min_activity` get the full model."""

    full_model_min_activity: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.full_model_min_activity) or self.full_model_min_activity < 0:
            raise ValueError("full_model_min_activity must be a finite number >= 0")

    def tier_of(self, features: FloatArray) -> Tier:
        # Ties go to the full model: the threshold is the lowest activity served by it.
        if user_activity(features) >= self.full_model_min_activity:
            return Tier.FULL
        return Tier.SMALL


class TieredRankingChain(RankingChain):
    """Full tier: the usual chain (full model behind the breaker, CPU model, rule). Small tier:
    the small model, then the rule formula if it fails; the breaker never hears of it."""

    def __init__(
        self,
        full: Ranker,
        small: Ranker,
        policy: RoutingPolicy,
        *,
        breaker: CircuitBreaker,
        cpu_model: Ranker | None = None,
        timeout_seconds: float = 0.1,
        reserve_seconds: float = 0.002,
        metrics: RankingObserver | None = None,
        on_route: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            full,
            breaker=breaker,
            cpu_model=cpu_model,
            timeout_seconds=timeout_seconds,
            reserve_seconds=reserve_seconds,
            metrics=metrics,
        )
        self.small = small
        self.policy = policy
        self._on_route = on_route or (lambda tier: None)

    async def rank(self, features: FloatArray) -> RankingOutcome:
        tier = self.policy.tier_of(features)
        self._on_route(tier.value)
        if tier is Tier.FULL:
            return await super().rank(features)
        try:
            timeout = outbound_timeout(self.timeout_seconds, reserve_seconds=self.reserve_seconds)
            scores = await self.small.score(features, timeout=timeout)
        except (Unavailable, DeadlineExceeded, InvalidArgument, FailedPrecondition) as error:
            logger.warning("small ranking model failed", extra={"error": error.message})
            return RankingOutcome(rule_scores(features), Backend.RULE_FALLBACK, "")
        # The small model is the planned model of this tier, not a fallback: MODEL, and its
        # own name in model_version ("ranker_small:3") says which tier answered.
        return RankingOutcome(scores, Backend.MODEL, self.small.model_version)
