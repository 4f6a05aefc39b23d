"""RecommendService: the front door (validation here; the pipeline in recsys.domain.recommend)
and DeleteUserData (right to erasure)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

import grpc

from recsys.adapters.dependency_probe import check_readiness, probe_dependency
from recsys.adapters.remote import GrpcCandidateSource, GrpcScorer
from recsys.candidate_sources import candidate_sources
from recsys.domain.erasure import UserDataEraser
from recsys.domain.ranking import Backend
from recsys.domain.recommend.pipeline import RecommendPipeline
from recsys.domain.recommend.values import Reason, Recommendation, RecommendConfig
from recsys.domain.requests import validate_recommend_query
from recsys.domain.validation import Violations
from recsys.errors import ConfigurationError, RecsysError
from recsys.grpc_server.app import ServiceBinding
from recsys.grpc_server.interceptors import current_caller
from recsys.observability.logging import current_request_id
from recsys.observability.metrics import RecommendMetrics
from recsys.ports.candidates import Scorer, VectorSearch
from recsys.servicers.convert import candidate_sources_to_proto, recommend_query_from_proto
from recsys.settings import RecommendSettings, RecsysSettings
from recsys.v1 import common_pb2, recommend_service_pb2, recommend_service_pb2_grpc

if TYPE_CHECKING:
    from recsys.composition import Components

logger = logging.getLogger(__name__)

SERVICE_NAME = recommend_service_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name

REASONS = {
    Reason.PERSONALIZED: recommend_service_pb2.RECOMMENDATION_REASON_PERSONALIZED,
    Reason.SIMILAR_TO_LIKED: recommend_service_pb2.RECOMMENDATION_REASON_SIMILAR_TO_LIKED,
    Reason.POPULAR_IN_CATEGORY: recommend_service_pb2.RECOMMENDATION_REASON_POPULAR_IN_CATEGORY,
    Reason.TRENDING: recommend_service_pb2.RECOMMENDATION_REASON_TRENDING,
}
BACKENDS = {
    Backend.MODEL: common_pb2.RANKING_BACKEND_MODEL,
    Backend.CPU_MODEL: common_pb2.RANKING_BACKEND_CPU_MODEL,
    Backend.RULE_FALLBACK: common_pb2.RANKING_BACKEND_RULE_FALLBACK,
}


def to_proto(answer: Recommendation) -> recommend_service_pb2.RecommendResponse:
    flags = answer.degradation
    if answer.cold_start:
        backend = common_pb2.RANKING_BACKEND_COLD_START
    elif answer.ranking_backend is None:
        backend = common_pb2.RANKING_BACKEND_UNSPECIFIED
    else:
        backend = BACKENDS[answer.ranking_backend]
    response = recommend_service_pb2.RecommendResponse(
        request_id=current_request_id() or "",
        model_version=answer.model_version,
        index_version=answer.index_version,
        cold_start=answer.cold_start,
        explanation=answer.explanation,
        ranking_backend=backend,
        degradation=recommend_service_pb2.Degradation(
            served_from_cache=flags.served_from_cache,
            served_from_precomputed=flags.served_from_precomputed,
            fallback_ranking=flags.fallback_ranking,
            partial_retrieval=flags.partial_retrieval,
            failed_shard_ids=list(flags.failed_shard_ids),
            default_features=flags.default_features,
            popularity_candidates=flags.popularity_candidates,
            metadata_unavailable=flags.metadata_unavailable,
            partial_candidates=flags.partial_candidates,
            failed_candidate_sources=candidate_sources_to_proto(flags.failed_candidate_sources),
        ),
    )
    add = response.items.add
    for item in answer.items:
        add(
            item_id=item.item_id,
            score=item.score,
            category=item.category,
            reason=REASONS[item.reason],
            reason_text=item.reason_text,
        )
    return response


class RecommendServicer(recommend_service_pb2_grpc.RecommendServiceServicer):
    def __init__(
        self, settings: RecommendSettings, pipeline: RecommendPipeline, eraser: UserDataEraser
    ) -> None:
        self._settings = settings
        self.pipeline = pipeline
        self.eraser = eraser

    async def Recommend(  # noqa: N802 - the generated servicer's method name
        self,
        request: recommend_service_pb2.RecommendRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommend_service_pb2.RecommendResponse:
        query = recommend_query_from_proto(request)
        validate_recommend_query(
            query,
            surfaces=self._settings.surfaces,
            categories=self._settings.categories,
            max_excluded_items=self._settings.max_excluded_items,
        )
        return to_proto(await self.pipeline.recommend(query))

    async def DeleteUserData(  # noqa: N802 - the generated servicer's method name
        self,
        request: recommend_service_pb2.DeleteUserDataRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommend_service_pb2.DeleteUserDataResponse:
        violations = Violations()
        violations.check_user_id("user_id", request.user_id)
        violations.raise_if_any()
        erased = await self.eraser.erase(
            request.user_id, request_id=current_request_id() or "", caller=current_caller()
        )
        return recommend_service_pb2.DeleteUserDataResponse(
            deleted_keys=erased.deleted_keys,
            deleted_interactions=erased.deleted_interactions,
            profile_erased=erased.profile_erased,
            deletion_event_id=erased.deletion_event_id,
        )


def recommend_config(settings: RecsysSettings) -> RecommendConfig:
    recommend = settings.recommend
    return RecommendConfig(
        candidates=recommend.candidates,
        cache_ttl_seconds=recommend.cache_ttl_seconds,
        cache_timeout_seconds=recommend.cache_timeout_ms / 1000,
        feature_timeout_seconds=recommend.feature_timeout_ms / 1000,
        metadata_timeout_seconds=recommend.metadata_timeout_ms / 1000,
        cold_start_candidates_per_source=recommend.cold_start_candidates_per_source,
        cold_start_similar_per_liked_item=recommend.cold_start_similar_per_liked_item,
        diversity_enabled=recommend.diversity_enabled,
        diversity_max_per_category=recommend.diversity_max_per_category,
        diversity_window=recommend.diversity_window,
        rate_limit_enabled=recommend.rate_limit_enabled,
        rate_limit_timeout_seconds=settings.rate_limit.timeout_ms / 1000,
        rate_limit_fail_open=settings.rate_limit.fail_open,
        default_country=recommend.default_country,
    )


async def build(components: Components) -> list[ServiceBinding]:
    settings = components.settings
    recommend = settings.recommend
    features = components.feature_store
    metadata = components.metadata
    cache = components.recommendation_cache
    limiter = components.rate_limiter
    search: VectorSearch | None = components.retriever
    if recommend.retrieve_target:
        remote_search = GrpcCandidateSource(
            recommend.retrieve_target,
            timeout_seconds=recommend.retrieve_timeout_ms / 1000,
            outbound=settings.outbound,
        )
        components.resources.push_async_callback(remote_search.close)
        _probe(components, "retrieve service", remote_search.target, remote_search.channel)
        search = remote_search
    scorer: Scorer | None = components.candidate_scorer
    if recommend.rank_target:
        remote_scorer = GrpcScorer(
            recommend.rank_target,
            timeout_seconds=recommend.rank_timeout_ms / 1000,
            outbound=settings.outbound,
        )
        components.resources.push_async_callback(remote_scorer.close)
        _probe(components, "rank service", remote_scorer.target, remote_scorer.channel)
        scorer = remote_scorer
    if search is None or scorer is None:
        raise ConfigurationError(
            "recommend needs retrieval and ranking: host them in the same process "
            "(`recsys serve embedded`) or set recommend.retrieve_target and recommend.rank_target"
        )
    config = recommend_config(settings)
    sources = await candidate_sources(components, search, config)
    pipeline = RecommendPipeline(
        config,
        features=features,
        metadata=metadata,
        cache=cache,
        sources=sources,
        scorer=scorer,
        limiter=limiter,
        observer=RecommendMetrics(components.registry, features=components.feature_store_metrics),
    )
    components.startup_hooks.append(lambda: _prepare(components, pipeline))
    components.recommend_pipeline = pipeline
    eraser = UserDataEraser(
        features=features,
        cache=cache,
        metadata=metadata,
        events=components.event_sink,
        limiter=limiter,
    )
    servicer = RecommendServicer(recommend, pipeline, eraser)
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: recommend_service_pb2_grpc.add_RecommendServiceServicer_to_server(
                servicer, server
            ),
        )
    ]


def _probe(components: Components, what: str, target: str, channel: grpc.aio.Channel) -> None:
    """Logs an ERROR when a remote dependency refuses this process's channel (TLS, credentials),
    once at startup, and checks its readiness in the background (`dependency.retrieve_service`);
    readiness does not wait for either."""

    async def probe() -> None:
        await probe_dependency(what, target, channel)

    components.run_in_background(probe)
    timeout = components.settings.health.dependency_timeout_seconds
    components.dependencies.register(
        what.replace(" ", "_"), functools.partial(check_readiness, channel, timeout=timeout)
    )


async def _prepare(components: Components, pipeline: RecommendPipeline) -> None:
    from recsys.metadata.migrate import prepare_schema

    await asyncio.to_thread(prepare_schema, components.settings.database)
    try:
        # Opens the pool (and SQLite's worker thread) before the first request needs it.
        await components.metadata.ping()
    except RecsysError as error:
        logger.warning("metadata store not reachable at startup", extra={"error": error.message})
    await pipeline.refresh_default_embedding()
