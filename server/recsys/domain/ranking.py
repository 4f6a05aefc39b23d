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
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from recsys.deadlines import outbound_timeout
from recsys.domain.candidates import SourceColumn, SourceKind
from recsys.domain.circuit_breaker import CircuitBreaker
from recsys.domain.observers import NullObserver, RankingObserver
from recsys.domain.requests import DeviceType
from recsys.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unavailable,
)
from recsys.ports.ranker import Ranker

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# The features the Rank service assembles, in column order. A ranking model's feature schema
# names the ones it reads, in its own column order (`feature_columns`); a name not here is
# refused by the model repository. Models trained before the candidate-source features were
# added name the first 12 and keep serving.
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
    # What the candidate sources said (recsys.domain.candidates): the item-to-item neighbours'
    # score over the user's history (0 where that source did not find the item), and each
    # source's placement as 1 / (1 + position) (0 where it did not find the item).
    "neighbour_score",
    "retrieval_rank_score",
    "neighbour_rank_score",
    "popularity_rank_score",
    # log(1 + the number of items in the user's history): how much the sources know of them.
    "user_activity",
)
_DEVICE_COLUMNS = {
    DeviceType.UNKNOWN: 7,
    DeviceType.MOBILE: 8,
    DeviceType.WEB: 9,
    DeviceType.TABLET: 10,
    DeviceType.TV: 11,
}

_SOURCE_COLUMNS = {
    SourceKind.RETRIEVAL: RANKING_FEATURES.index("retrieval_rank_score"),
    SourceKind.NEIGHBOURS: RANKING_FEATURES.index("neighbour_rank_score"),
    SourceKind.POPULARITY: RANKING_FEATURES.index("popularity_rank_score"),
}
_NEIGHBOUR_SCORE = RANKING_FEATURES.index("neighbour_score")
_USER_ACTIVITY = RANKING_FEATURES.index("user_activity")


class Backend(enum.Enum):
    MODEL = "model"
    CPU_MODEL = "cpu_model"
    RULE_FALLBACK = "rule_fallback"


def feature_columns(names: tuple[str, ...]) -> npt.NDArray[np.int64] | None:
    """The columns of the assembled matrix a model reads, in its order; None when it reads
    every column in the assembled order (no projection). ValueError for an unknown or repeated
    name."""
    unknown = [name for name in names if name not in RANKING_FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}")
    if len(set(names)) != len(names):
        raise ValueError("a feature is named twice")
    if names == RANKING_FEATURES:
        return None
    return np.array([RANKING_FEATURES.index(name) for name in names], dtype=np.int64)


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
    # What each candidate source said about the candidates (absent sources: zeros).
    sources: Mapping[SourceKind, SourceColumn] = field(default_factory=dict)
    # Items in the user's history; None when unknown (the feature is then 0).
    history_size: int | None = None


def _rank_scores(positions: npt.NDArray[np.int64]) -> FloatArray:
    """1 / (1 + position) where found, 0 where not (position -1)."""
    result: FloatArray = np.where(
        positions >= 0, 1.0 / (1.0 + np.maximum(positions, 0)), 0.0
    ).astype(np.float32)
    return result


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
    for source, column in inputs.sources.items():
        if len(column.positions) != count:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "candidate_sources",
                        f"the {source.value} column has {len(column.positions)} rows for "
                        f"{count} candidates",
                    )
                ]
            )
        matrix[:, _SOURCE_COLUMNS[source]] = _rank_scores(column.positions)
        if source is SourceKind.NEIGHBOURS:
            matrix[:, _NEIGHBOUR_SCORE] = column.scores
    if inputs.history_size is not None:
        matrix[:, _USER_ACTIVITY] = math.log1p(max(0, inputs.history_size))
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
