"""Scoring candidates for a user: features from the store (with a timeout and defaults),
the feature matrix, and the ranking chain. Used by RankService and, in-process, by Recommend."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.domain.candidates import SourceColumn, SourceKind
from recsys.domain.observers import NullObserver, RankingObserver
from recsys.domain.ordering import ranked_order
from recsys.domain.ranking import Backend, RankingChain, RankingInputs, assemble_features
from recsys.domain.requests import RequestContext
from recsys.errors import RecsysError
from recsys.ports.features import FeatureStore, ItemFeatureBatch, UserFeatures, batch_from

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredCandidates:
    """Candidates in rank order: score descending, then item id ascending."""

    item_ids: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    backend: Backend
    model_version: str
    # Some features could not be read in time, or some candidates have none in the store
    # (an empty or partly loaded store); the model scored defaults for them.
    default_features: bool = False


class CandidateScorer:
    def __init__(
        self,
        chain: RankingChain,
        features: FeatureStore,
        *,
        feature_timeout_seconds: float = 0.01,
        metrics: RankingObserver | None = None,
    ) -> None:
        self.chain = chain
        self.features = features
        self.feature_timeout_seconds = feature_timeout_seconds
        self.metrics: RankingObserver = metrics or NullObserver()

    async def score(
        self,
        user_id: str,
        item_ids: npt.NDArray[np.int64],
        candidate_scores: npt.NDArray[np.float32],
        context: RequestContext,
        *,
        sources: Mapping[SourceKind, SourceColumn] | None = None,
        history_size: int | None = None,
    ) -> ScoredCandidates:
        """`sources`: what each candidate source said about the candidates (ranking features;
        absent sources read as not having found them); `history_size`: the number of items in
        the user's history (None: unknown)."""
        count = len(item_ids)
        features_read = await self._read_features(user_id, item_ids.tolist())
        user, items = features_read if features_read is not None else (None, _defaults(count))
        embedding = user.embedding if user is not None else None
        user_vector = None
        if (
            embedding is not None
            and items.embeddings is not None
            and embedding.vector.shape[0] == items.embeddings.shape[1]
        ):
            user_vector = embedding.vector
        preferences = user.preferences if user is not None else {}
        affinity = np.zeros(count, np.float32)
        if preferences:
            affinity = items.category_values(preferences)
        features = assemble_features(
            RankingInputs(
                candidate_scores=np.asarray(candidate_scores, np.float32),
                popularity=items.popularity,
                freshness=items.freshness,
                category_affinity=affinity,
                item_vectors=items.embeddings,
                user_vector=user_vector,
                request_time=context.request_time or dt.datetime.now(dt.UTC),
                device_type=context.device_type,
                sources=sources or {},
                history_size=history_size,
            )
        )
        started = time.perf_counter()
        outcome = await self.chain.rank(features)
        self.metrics.scored(outcome.backend.value, time.perf_counter() - started)
        missing = features_read is not None and not bool(items.found.all())
        if missing:
            self.metrics.default_features_used()
        order = ranked_order(item_ids, outcome.scores)
        return ScoredCandidates(
            item_ids[order],
            outcome.scores[order],
            outcome.backend,
            outcome.model_version,
            default_features=features_read is None or missing,
        )

    async def _read_features(
        self, user_id: str, item_ids: list[int]
    ) -> tuple[UserFeatures | None, ItemFeatureBatch] | None:
        """User and item features together within the feature timeout; None (the caller
        uses defaults) when the store is slow or down (seed "Feature Store Timeout
        Handling")."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.feature_timeout_seconds):
                user, items = await asyncio.gather(
                    self.features.get_user_features(user_id),
                    self.features.get_item_features(item_ids),
                )
            return user, items
        except TimeoutError:
            logger.warning(
                "features unavailable; ranking with defaults",
                extra={"error": f"slower than {self.feature_timeout_seconds * 1000:.0f} ms"},
            )
        except RecsysError as error:
            logger.warning(
                "features unavailable; ranking with defaults", extra={"error": str(error)}
            )
        finally:
            self.metrics.features_read(time.perf_counter() - started)
        self.metrics.default_features_used()
        return None


def _defaults(count: int) -> ItemFeatureBatch:
    return batch_from([None] * count)
