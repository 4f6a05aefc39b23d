"""Retrieval and ranking in other processes: RetrieveService and RankService clients that
satisfy the Recommend pipeline's CandidateSource and Scorer (distributed mode)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.adapters.channels import outbound_channel, reconnect_options
from recsys.adapters.grpc_errors import call
from recsys.deadlines import outbound_timeout
from recsys.domain.candidates import MERGE_ORDER, SourceColumn, SourceKind
from recsys.domain.ordering import ranked_order
from recsys.domain.ranking import Backend
from recsys.domain.requests import DeviceType, RequestContext
from recsys.domain.retrieval import RetrievalQuery, RetrievalResult
from recsys.domain.scoring import ScoredCandidates
from recsys.errors import DeadlineExceeded, InvalidArgument, Unavailable
from recsys.settings import OutboundSettings
from recsys.v1 import common_pb2, rank_service_pb2, rank_service_pb2_grpc
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2
from recsys.v1 import retrieve_service_pb2_grpc as retrieve_grpc

_BACKENDS = {
    common_pb2.RANKING_BACKEND_MODEL: Backend.MODEL,
    common_pb2.RANKING_BACKEND_CPU_MODEL: Backend.CPU_MODEL,
    common_pb2.RANKING_BACKEND_RULE_FALLBACK: Backend.RULE_FALLBACK,
}
_DEVICE_TYPES = {
    DeviceType.UNKNOWN: common_pb2.DEVICE_TYPE_UNSPECIFIED,
    DeviceType.MOBILE: common_pb2.DEVICE_TYPE_MOBILE,
    DeviceType.WEB: common_pb2.DEVICE_TYPE_WEB,
    DeviceType.TABLET: common_pb2.DEVICE_TYPE_TABLET,
    DeviceType.TV: common_pb2.DEVICE_TYPE_TV,
}
_CANDIDATE_SOURCES = {
    SourceKind.RETRIEVAL: common_pb2.CANDIDATE_SOURCE_RETRIEVAL,
    SourceKind.NEIGHBOURS: common_pb2.CANDIDATE_SOURCE_NEIGHBOURS,
    SourceKind.POPULARITY: common_pb2.CANDIDATE_SOURCE_POPULARITY,
}
# How long Rank requests go as sub-messages after a server refused columns (an older server).
SUB_MESSAGES_RETRY_SECONDS = 60.0
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
            response_layout=retrieve_pb2.CANDIDATE_LAYOUT_COLUMNS,
        )
        response = await call(
            "retrieve service",
            self.stub.Retrieve(request, timeout=outbound_timeout(self.timeout_seconds)),
        )
        item_ids, scores, shard_ids = _retrieved_columns(response)
        return RetrievalResult(
            item_ids=item_ids,
            scores=scores,
            shard_ids=shard_ids,
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
        # While a Rank server predates the columns (a rolling upgrade), candidates go as
        # sub-messages until this monotonic time; then columns are tried again.
        self._sub_messages_until = 0.0

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
        columns = time.monotonic() >= self._sub_messages_until
        request = _RankInputs(user_id, item_ids, candidate_scores, context, sources, history_size)
        try:
            try:
                response = await self._rank(request, columns)
            except InvalidArgument as error:
                # A Rank server older than the columns reads a request in columns as one without
                # candidates: say it again in sub-messages, and keep to them for a minute.
                if not columns or not any(v.field == "candidates" for v in error.violations):
                    raise
                self._sub_messages_until = time.monotonic() + SUB_MESSAGES_RETRY_SECONDS
                response = await self._rank(request, False)
        except (Unavailable, DeadlineExceeded):
            # The rank service itself is down or slow: order by the retrieval score (rule
            # fallback), then the candidates other sources found, in the order they came (the
            # merge's). Its refusals of our request are raised: they are bugs to see.
            order = _fallback_order(item_ids, candidate_scores, sources)
            return ScoredCandidates(
                item_ids[order], candidate_scores[order], Backend.RULE_FALLBACK, ""
            )
        ranked_ids, ranked_scores = ranked_columns(response)
        return ScoredCandidates(
            ranked_ids,
            ranked_scores,
            _BACKENDS.get(response.backend, Backend.MODEL),
            response.model_version,
            default_features=response.default_features,
        )

    async def _rank(self, inputs: _RankInputs, columns: bool) -> rank_service_pb2.RankResponse:
        # Packed columns both ways: a fraction of the cost of a sub-message per candidate. The
        # response layout is asked for either way: an older server ignores it and answers
        # `items`, which ranked_columns reads too.
        request = rank_service_pb2.RankRequest(
            user_id=inputs.user_id,
            # The device and time feed the model's context features, as in-process.
            context=_context_to_proto(inputs.context),
            response_layout=retrieve_pb2.CANDIDATE_LAYOUT_COLUMNS,
        )
        if columns:
            request.candidate_item_ids.extend(inputs.item_ids.tolist())
            request.candidate_scores.extend(inputs.candidate_scores.tolist())
        else:
            add = request.candidates.add
            ranked = zip(inputs.item_ids.tolist(), inputs.candidate_scores.tolist(), strict=True)
            for item_id, score in ranked:
                add(item_id=item_id, candidate_score=score)
        # The sources' columns are aligned with the candidates in either layout; a Rank server
        # older than them ignores both fields and ranks without those features.
        add_source = request.candidate_sources.add
        for source in MERGE_ORDER:
            column = (inputs.sources or {}).get(source)
            if column is not None:
                add_source(
                    source=_CANDIDATE_SOURCES[source],
                    scores=column.scores.tolist(),
                    positions=column.positions.tolist(),
                )
        if inputs.history_size is not None:
            request.user_history_size = inputs.history_size
        # No time left is a slow dependency too: the rule order still answers in time.
        timeout = outbound_timeout(self.timeout_seconds)
        response: rank_service_pb2.RankResponse = await call(
            "rank service", self.stub.Rank(request, timeout=timeout)
        )
        return response

    async def close(self) -> None:
        await self.channel.close()


@dataclass(frozen=True)
class _RankInputs:
    """One Score call's arguments, sent in either request layout."""

    user_id: str
    item_ids: npt.NDArray[np.int64]
    candidate_scores: npt.NDArray[np.float32]
    context: RequestContext
    sources: Mapping[SourceKind, SourceColumn] | None
    history_size: int | None


def _context_to_proto(context: RequestContext) -> common_pb2.RequestContext:
    message = common_pb2.RequestContext(
        device_type=_DEVICE_TYPES[context.device_type],
        country=context.country,
        locale=context.locale,
    )
    if context.request_time is not None:
        message.request_time.FromDatetime(context.request_time)
    if context.category is not None:
        message.category = context.category
    return message


def _retrieved_columns(
    response: retrieve_pb2.RetrieveResponse,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """The candidates of a response to a CANDIDATE_LAYOUT_COLUMNS request. A server older than
    the columns ignores the layout and answers with `candidates`: those are read then."""
    if response.candidates:
        candidates = response.candidates
        count = len(candidates)
        return (
            np.fromiter((c.item_id for c in candidates), np.int64, count),
            np.fromiter((c.score for c in candidates), np.float32, count),
            np.fromiter((c.shard_id for c in candidates), np.int32, count),
        )
    count = len(response.item_ids)
    if len(response.scores) != count or len(response.shard_ids) != count:
        raise Unavailable(
            f"the retrieve service answered {count} item ids, {len(response.scores)} scores "
            f"and {len(response.shard_ids)} shard ids",
            reason="MALFORMED_RESPONSE",
        )
    return (
        np.fromiter(response.item_ids, np.int64, count),
        np.fromiter(response.scores, np.float32, count),
        np.fromiter(response.shard_ids, np.int32, count),
    )


def ranked_columns(
    response: rank_service_pb2.RankResponse,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The scored candidates of a response to a CANDIDATE_LAYOUT_COLUMNS request (or its
    `items`, from a server older than the columns)."""
    if response.items:
        items = response.items
        count = len(items)
        return (
            np.fromiter((item.item_id for item in items), np.int64, count),
            np.fromiter((item.score for item in items), np.float32, count),
        )
    count = len(response.item_ids)
    if len(response.scores) != count:
        raise Unavailable(
            f"the rank service answered {count} item ids and {len(response.scores)} scores",
            reason="MALFORMED_RESPONSE",
        )
    return (
        np.fromiter(response.item_ids, np.int64, count),
        np.fromiter(response.scores, np.float32, count),
    )


def _fallback_order(
    item_ids: npt.NDArray[np.int64],
    candidate_scores: npt.NDArray[np.float32],
    sources: Mapping[SourceKind, SourceColumn] | None,
) -> npt.NDArray[np.int64]:
    """Retrieval's candidates by its score, then the rest in the given order: a retrieval
    score of 0 where retrieval did not find an item says nothing about it."""
    retrieval = (sources or {}).get(SourceKind.RETRIEVAL)
    if retrieval is None:
        return ranked_order(item_ids, candidate_scores)
    found = np.flatnonzero(retrieval.found)
    rest = np.flatnonzero(~retrieval.found)
    head = found[ranked_order(item_ids[found], candidate_scores[found])]
    order: npt.NDArray[np.int64] = np.concatenate([head, rest]).astype(np.int64)
    return order
