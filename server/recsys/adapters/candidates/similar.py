"""Items similar to the ones the user liked: each liked item's vector searched in the index
(seed Simulation 2, cold start)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from recsys.domain.recommend.values import CandidatePool, Reason
from recsys.domain.retrieval import RetrievalQuery
from recsys.errors import RecsysError
from recsys.ports.candidates import CandidateRequest, VectorSearch
from recsys.ports.features import FeatureStore

logger = logging.getLogger(__name__)


class SimilarToLikedCandidates:
    name = "similar_to_liked"

    def __init__(self, features: FeatureStore, search: VectorSearch, *, per_item: int) -> None:
        self.features = features
        self.search = search
        self.per_item = per_item

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        profile = request.profile
        if profile is None or not profile.liked_item_ids:
            return CandidatePool()
        liked = await self.features.get_item_features(list(profile.liked_item_ids))
        if liked.embeddings is None:
            return CandidatePool()
        excluded = frozenset(profile.liked_item_ids)
        queries = [
            RetrievalQuery(
                vector=liked.embeddings[row],
                embedding_version=request.embedding_version,
                # One more: the liked item itself may come back before exclusion.
                k=self.per_item + 1,
                excluded_item_ids=excluded,
            )
            for row in np.flatnonzero(liked.found)
        ]
        answers = await asyncio.gather(
            *(self.search.retrieve(query) for query in queries), return_exceptions=True
        )
        found: list[int] = []
        failures: list[RecsysError] = []
        for answer in answers:
            if isinstance(answer, RecsysError):
                failures.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                found.extend(answer.item_ids.tolist())
        if failures:
            if len(failures) == len(answers):
                raise failures[0]
            logger.warning(
                "some similar-item searches failed",
                extra={"failed": len(failures), "searches": len(answers)},
            )
        return CandidatePool.ranked(dict.fromkeys(found), Reason.SIMILAR_TO_LIKED)
