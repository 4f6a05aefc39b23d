"""Retrieval and ranking in other processes: RetrieveService and RankService clients that
satisfy the Recommend pipeline's CandidateSource and Scorer (distributed mode)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys.adapters.channels import outbound_channel, reconnect_options
from recsys.adapters.grpc_errors import call
from recsys.deadlines import outbound_timeout
from recsys.domain.ordering import ranked_order
from recsys.domain.ranking import Backend
from recsys.domain.requests import RequestContext
from recsys.domain.retrieval import RetrievalQuery, RetrievalResult
from recsys.domain.scoring import ScoredCandidates
from recsys.errors import DeadlineExceeded, Unavailable
from recsys.settings import OutboundSettings
from recsys.v1 import common_pb2, rank_service_pb2, rank_service_pb2_grpc
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2
from recsys.v1 import retrieve_service_pb2_grpc as retrieve_grpc

_BACKENDS = {
    common_pb2.RANKING_BACKEND_MODEL: Backend.MODEL,
    common_pb2.RANKING_BACKEND_CPU_MODEL: Backend.CPU_MODEL,
    common_pb2.RANKING_BACKEND_RULE_FALLBACK: Backend.RULE_FALLBACK,
}
OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),
    *reconnect_options(max_backoff_ms=2000),
]


class GrpcCandidateSource:
    def __init__(
        self,
        target: str,
        *,
        timeout_seconds: float = 0.05,
        outbound: OutboundSettings | None = None,
    ) -> None:
        self.target = target
        self.channel = outbound_channel(
            target, "retrieve", outbound or OutboundSettings(), options=OPTIONS
        )
        self.stub = retrieve_grpc.RetrieveServiceStub(self.channel)
        self.timeout_seconds = timeout_seconds

    async def retrieve(self, query: RetrievalQuery) -> RetrievalResult:
        request = retrieve_pb2.RetrieveRequest(
            query_vector=common_pb2.EmbeddingVector(
                values=np.asarray(query.vector, np.float32).tolist(),
                embedding_version=query.embedding_version,
            ),
            k=query.k,
            excluded_item_ids=sorted(query.excluded_item_ids),
        )
        response = await call(
            "retrieve service",
            self.stub.Retrieve(request, timeout=outbound_timeout(self.timeout_seconds)),
        )
        candidates = response.candidates
        return RetrievalResult(
            item_ids=np.array([c.item_id for c in candidates], np.int64),
            scores=np.array([c.score for c in candidates], np.float32),
            shard_ids=np.array([c.shard_id for c in candidates], np.int32),
            index_version=response.index_version,
            embedding_version=response.embedding_version,
            failed_shard_ids=tuple(response.failed_shard_ids),
        )

    async def close(self) -> None:
        await self.channel.close()


class GrpcScorer:
    def __init__(
        self,
        target: str,
        *,
        timeout_seconds: float = 0.1,
        outbound: OutboundSettings | None = None,
    ) -> None:
        self.target = target
        self.channel = outbound_channel(
            target, "rank", outbound or OutboundSettings(), options=OPTIONS
        )
        self.stub = rank_service_pb2_grpc.RankServiceStub(self.channel)
        self.timeout_seconds = timeout_seconds

    async def score(
        self,
        user_id: str,
        item_ids: npt.NDArray[np.int64],
        candidate_scores: npt.NDArray[np.float32],
        context: RequestContext,
    ) -> ScoredCandidates:
        request = rank_service_pb2.RankRequest(user_id=user_id)
        add = request.candidates.add
        for item, score in zip(item_ids.tolist(), candidate_scores.tolist(), strict=True):
            add(item_id=item, candidate_score=score)
        try:
            # No time left is a slow dependency too: the rule order still answers in time.
            timeout = outbound_timeout(self.timeout_seconds)
            response = await call("rank service", self.stub.Rank(request, timeout=timeout))
        except (Unavailable, DeadlineExceeded):
            # The rank service itself is down or slow: order by the retrieval score (rule
            # fallback). Its refusals of our request are raised: they are bugs to see.
            order = ranked_order(item_ids, candidate_scores)
            return ScoredCandidates(
                item_ids[order], candidate_scores[order], Backend.RULE_FALLBACK, ""
            )
        return ScoredCandidates(
            np.array([item.item_id for item in response.items], np.int64),
            np.array([item.score for item in response.items], np.float32),
            _BACKENDS.get(response.backend, Backend.MODEL),
            response.model_version,
            default_features=response.default_features,
        )

    async def close(self) -> None:
        await self.channel.close()
