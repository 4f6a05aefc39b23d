"""Request builders and channel credentials shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from recsys.v1 import (
    common_pb2,
    ingest_service_pb2,
    interaction_event_pb2,
    rank_service_pb2,
    recommend_service_pb2,
    retrieve_service_pb2,
)
from recsys_client.options import ClientOptions


def channel_credentials(options: ClientOptions) -> grpc.ChannelCredentials | None:
    if options.tls is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=options.tls.root_certificates,
        private_key=options.tls.private_key,
        certificate_chain=options.tls.certificate_chain,
    )


def recommend_request(
    user_id: str,
    surface: str,
    limit: int,
    context: common_pb2.RequestContext | None,
    excluded_item_ids: Iterable[int],
) -> recommend_service_pb2.RecommendRequest:
    return recommend_service_pb2.RecommendRequest(
        user_id=user_id,
        surface=surface,
        limit=limit,
        context=context,
        excluded_item_ids=list(excluded_item_ids),
    )


def record_interactions_request(
    events: Iterable[interaction_event_pb2.InteractionEvent],
) -> ingest_service_pb2.RecordInteractionsRequest:
    return ingest_service_pb2.RecordInteractionsRequest(events=list(events))


def retrieve_request(
    *,
    user_id: str | None,
    query_vector: Iterable[float] | None,
    embedding_version: str,
    k: int,
    require_all_shards: bool,
) -> retrieve_service_pb2.RetrieveRequest:
    if (user_id is None) == (query_vector is None):
        raise ValueError("give exactly one of user_id and query_vector")
    request = retrieve_service_pb2.RetrieveRequest(k=k, require_all_shards=require_all_shards)
    if user_id is not None:
        request.user_id = user_id
    else:
        assert query_vector is not None
        request.query_vector.values.extend(query_vector)
        request.query_vector.embedding_version = embedding_version
    return request


def rank_request(
    user_id: str,
    candidates: Iterable[tuple[int, float]],
    context: common_pb2.RequestContext | None,
    candidate_sources: Iterable[rank_service_pb2.CandidateSourceColumn] = (),
    user_history_size: int | None = None,
) -> rank_service_pb2.RankRequest:
    # Sent as sub-messages, which every Rank server reads (one older than the packed columns
    # reads a request in columns as one without candidates); the platform's own callers, which
    # are upgraded with Rank, use the columns. The response keeps its `items` layout.
    request = rank_service_pb2.RankRequest(
        user_id=user_id,
        context=context,
        candidate_sources=candidate_sources,
        user_history_size=user_history_size,
    )
    add = request.candidates.add
    for item_id, score in candidates:
        add(item_id=item_id, candidate_score=score)
    return request
