"""Ranking: the feature matrix for all candidates at once, the rule-based fallback score, and
the backend chain behind a circuit breaker (seed "Circuit Breaker for Model Serving").

Model -> (breaker open or model failing) -> CPU model, if configured -> rule fallback
`0.5 * candidate_score + 0.3 * popularity + 0.2 * freshness` on inputs normalised to [0, 1].
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.deadlines import outbound_timeout
from recsys.domain.circuit_breaker import CircuitBreaker
from recsys.domain.observers import NullObserver, RankingObserver
from recsys.domain.requests import DeviceType
from recsys.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable
from recsys.ports.ranker import Ranker

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# The features the Rank service assembles, in column order. A ranking model's feature schema
# must list exactly these (the model repository refuses any other).
RANKING_FEATURES: tuple[str, ...] = (
    "candidate_score",
    "user_item_dot",
    "item_popularity",
    "item_freshness",
    "category_affinity",
    "hour_sin",
    "hour_cos",
    "device_unknown",
    "device_mobile",
    "device_web",
    "device_tablet",
    "device_tv",
)
_DEVICE_COLUMNS = {
    DeviceType.UNKNOWN: 7,
    DeviceType.MOBILE: 8,
    DeviceType.WEB: 9,
    DeviceType.TABLET: 10,
    DeviceType.TV: 11,
}


class Backend(enum.Enum):
    MODEL = "model"
    CPU_MODEL = "cpu_model"
    RULE_FALLBACK = "rule_fallback"


@dataclass(frozen=True)
class RankingInputs:
    """Per-candidate inputs, aligned arrays of length n."""

    candidate_scores: FloatArray
    popularity: FloatArray
    freshness: FloatArray
    category_affinity: FloatArray
    # n x d item embeddings and the d user embedding; None when unknown.
    item_vectors: FloatArray | None
    user_vector: FloatArray | None
    request_time: dt.datetime
    device_type: DeviceType


def assemble_features(inputs: RankingInputs) -> FloatArray:
    """The n x F feature matrix, built column by column with numpy (no per-item Python)."""
    count = len(inputs.candidate_scores)
    matrix = np.zeros((count, len(RANKING_FEATURES)), dtype=np.float32)
    matrix[:, 0] = inputs.candidate_scores
    if inputs.item_vectors is not None and inputs.user_vector is not None:
        matrix[:, 1] = inputs.item_vectors @ inputs.user_vector
    matrix[:, 2] = inputs.popularity
    matrix[:, 3] = inputs.freshness
    matrix[:, 4] = inputs.category_affinity
    hour = inputs.request_time.hour + inputs.request_time.minute / 60
    matrix[:, 5] = math.sin(2 * math.pi * hour / 24)
    matrix[:, 6] = math.cos(2 * math.pi * hour / 24)
    matrix[:, _DEVICE_COLUMNS[inputs.device_type]] = 1.0
    return matrix


def _normalised(values: FloatArray) -> FloatArray:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def rule_scores(features: FloatArray) -> FloatArray:
    """The seed's fallback: 0.5 candidate score + 0.3 popularity + 0.2 freshness, normalised."""
    if not len(features):
        return np.empty(0, dtype=np.float32)
    result: FloatArray = (
        0.5 * _normalised(features[:, 0])
        + 0.3 * _normalised(features[:, 2])
        + 0.2 * _normalised(features[:, 3])
    ).astype(np.float32)
    return result


@dataclass(frozen=True)
class RankingOutcome:
    scores: FloatArray
    backend: Backend
    model_version: str


class RankingChain:
    """The primary model behind a breaker, then the CPU model, then the rule formula."""

    def __init__(
        self,
        primary: Ranker,
        *,
        breaker: CircuitBreaker,
        cpu_model: Ranker | None = None,
        timeout_seconds: float = 0.1,
        reserve_seconds: float = 0.002,
        metrics: RankingObserver | None = None,
    ) -> None:
        self.primary = primary
        self.cpu_model = cpu_model
        self.breaker = breaker
        self.timeout_seconds = timeout_seconds
        self.reserve_seconds = reserve_seconds
        self.metrics: RankingObserver = metrics or NullObserver()
        self.model_failures = 0

    async def rank(self, features: FloatArray) -> RankingOutcome:
        if self.breaker.allow():
            self.metrics.model_called("primary")
            try:
                scores = await self.primary.score(features, timeout=self._timeout())
            except (Unavailable, DeadlineExceeded) as error:
                self.breaker.record_failure()
                self.model_failures += 1
                self._count_error(
                    "timeout" if isinstance(error, DeadlineExceeded) else "unavailable"
                )
                logger.warning("ranking model failed", extra={"error": error.message})
            except (InvalidArgument, FailedPrecondition) as error:
                # Not a health signal: the model is up but refused these inputs.
                self._count_error("refused")
                logger.error("ranking model refused the features", extra={"error": error.message})
            else:
                self.breaker.record_success()
                backend = Backend.RULE_FALLBACK if self.primary.rule_based else Backend.MODEL
                return RankingOutcome(scores, backend, self.primary.model_version)
        if self.cpu_model is not None:
            self.metrics.model_called("cpu_model")
            try:
                scores = await self.cpu_model.score(features, timeout=self._timeout())
            except (Unavailable, DeadlineExceeded, InvalidArgument, FailedPrecondition) as error:
                logger.warning("CPU ranking model failed", extra={"error": error.message})
            else:
                return RankingOutcome(scores, Backend.CPU_MODEL, self.cpu_model.model_version)
        return RankingOutcome(rule_scores(features), Backend.RULE_FALLBACK, "")

    def _count_error(self, kind: str) -> None:
        self.metrics.model_error(kind)

    def _timeout(self) -> float:
        try:
            return outbound_timeout(self.timeout_seconds, reserve_seconds=self.reserve_seconds)
        except DeadlineExceeded:
            return 0.001  # no time left: the call fails fast and the rule answers
