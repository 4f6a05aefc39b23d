"""Personalised candidates: the user's embedding searched in the ANN index."""

from __future__ import annotations

from recsys.domain.recommend.values import CandidatePool, Reason
from recsys.domain.retrieval import RetrievalQuery
from recsys.ports.candidates import CandidateRequest, VectorSearch


class RetrievalCandidates:
    name = "retrieval"

    def __init__(self, search: VectorSearch, *, count: int) -> None:
        self.search = search
        self.count = count

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        embedding = request.embedding
        if embedding is None:
            return CandidatePool()
        result = await self.search.retrieve(
            RetrievalQuery(
                vector=embedding.vector,
                embedding_version=embedding.embedding_version,
                k=self.count,
                excluded_item_ids=frozenset(request.query.excluded_item_ids),
            )
        )
        return CandidatePool.ranked(
            result.item_ids.tolist(),
            Reason.PERSONALIZED,
            scores=result.scores.tolist(),
            index_version=result.index_version,
            failed_shard_ids=result.failed_shard_ids,
        )
