"""RecommendService: the front door (validation here; the pipeline in recsys.domain.recommend)
and DeleteUserData (right to erasure)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

import grpc

from recsys.adapters.remote import GrpcCandidateSource, GrpcScorer
from recsys.adapters.sql.metadata import hashed_subject
from recsys.domain.recommend import Recommendation, RecommendPipeline
from recsys.domain.requests import validate_recommend_query
from recsys.domain.validation import Violations
from recsys.errors import ConfigurationError
from recsys.grpc_server.app import ServiceBinding
from recsys.observability.logging import current_request_id
from recsys.observability.metrics import RecommendMetrics
from recsys.ports.cache import RecommendationCache
from recsys.ports.events import EventSink
from recsys.ports.features import FeatureStore
from recsys.ports.metadata import MetadataRepository
from recsys.ports.rate_limit import RateLimiter
from recsys.servicers.convert import recommend_query_from_proto
from recsys.servicers.shared import feature_store, shared_adapter
from recsys.settings import RecommendSettings
from recsys.v1 import common_pb2, recommend_service_pb2, recommend_service_pb2_grpc

if TYPE_CHECKING:
    from recsys.services import ServiceContext

logger = logging.getLogger(__name__)

SERVICE_NAME = recommend_service_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name

REASONS = {
    "personalized": recommend_service_pb2.RECOMMENDATION_REASON_PERSONALIZED,
    "similar_to_liked": recommend_service_pb2.RECOMMENDATION_REASON_SIMILAR_TO_LIKED,
    "popular_in_category": recommend_service_pb2.RECOMMENDATION_REASON_POPULAR_IN_CATEGORY,
    "trending": recommend_service_pb2.RECOMMENDATION_REASON_TRENDING,
}
UNSPECIFIED_REASON = recommend_service_pb2.RECOMMENDATION_REASON_UNSPECIFIED
BACKENDS = {
    "model": common_pb2.RANKING_BACKEND_MODEL,
    "cpu_model": common_pb2.RANKING_BACKEND_CPU_MODEL,
    "rule_fallback": common_pb2.RANKING_BACKEND_RULE_FALLBACK,
}


def deletion_event_id(user_id: str) -> str:
    """Stable per user, so repeated erasure requests name the same event."""
    return "erase-" + hashlib.sha256(user_id.encode()).hexdigest()[:24]


def to_proto(answer: Recommendation) -> recommend_service_pb2.RecommendResponse:
    flags = answer.degradation
    response = recommend_service_pb2.RecommendResponse(
        request_id=current_request_id() or "",
        model_version=answer.model_version,
        index_version=answer.index_version,
        cold_start=answer.cold_start,
        explanation=answer.explanation,
        ranking_backend=(
            common_pb2.RANKING_BACKEND_COLD_START
            if answer.cold_start
            else BACKENDS.get(answer.ranking_backend, common_pb2.RANKING_BACKEND_UNSPECIFIED)
        ),
        degradation=recommend_service_pb2.Degradation(
            served_from_cache=flags.served_from_cache,
            served_from_precomputed=flags.served_from_precomputed,
            fallback_ranking=flags.fallback_ranking,
            partial_retrieval=flags.partial_retrieval,
            failed_shard_ids=list(flags.failed_shard_ids),
            default_features=flags.default_features,
            popularity_candidates=flags.popularity_candidates,
        ),
    )
    add = response.items.add
    for item in answer.items:
        add(
            item_id=item.item_id,
            score=item.score,
            category=item.category,
            reason=REASONS.get(
                item.reason, recommend_service_pb2.RECOMMENDATION_REASON_UNSPECIFIED
            ),
            reason_text=item.reason_text,
        )
    return response


class RecommendServicer(recommend_service_pb2_grpc.RecommendServiceServicer):
    def __init__(
        self,
        settings: RecommendSettings,
        pipeline: RecommendPipeline,
        *,
        features: FeatureStore,
        metadata: MetadataRepository,
        cache: RecommendationCache,
        limiter: RateLimiter | None,
        events: EventSink,
    ) -> None:
        self._settings = settings
        self.pipeline = pipeline
        self.features = features
        self.metadata = metadata
        self.cache = cache
        self.limiter = limiter
        self.events = events

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
        user_id = request.user_id
        event_id = deletion_event_id(user_id)
        # Every store must forget the user: failures propagate (UNAVAILABLE) so the caller
        # retries; each step is idempotent.
        feature_keys, cache_keys, limit_keys, erased = await asyncio.gather(
            self.features.delete_user(user_id),
            self.cache.delete_user(user_id),
            self.limiter.reset(user_id) if self.limiter is not None else _zero(),
            self.metadata.erase_user(user_id),
        )
        await self.events.publish_user_deletion(user_id, event_id)
        deleted_keys = feature_keys + cache_keys + limit_keys
        await self.metadata.write_audit(
            "erase_user",
            hashed_subject(user_id),
            {
                "deleted_keys": deleted_keys,
                "deleted_interactions": erased.deleted_interactions,
                "profile_erased": erased.profile_erased,
                "deletion_event_id": event_id,
                "request_id": current_request_id() or "",
            },
        )
        logger.info(
            "user data erased",
            extra={"subject": hashed_subject(user_id), "deleted_keys": deleted_keys},
        )
        return recommend_service_pb2.DeleteUserDataResponse(
            deleted_keys=deleted_keys,
            deleted_interactions=erased.deleted_interactions,
            profile_erased=erased.profile_erased,
            deletion_event_id=event_id,
        )


async def _zero() -> int:
    return 0


async def build(context: ServiceContext) -> list[ServiceBinding]:
    settings = context.settings
    recommend = settings.recommend
    features = feature_store(context)
    metadata: MetadataRepository = shared_adapter(context, "metadata", recommend.metadata)
    cache: RecommendationCache = shared_adapter(context, "recommendation_cache", recommend.cache)
    limiter: RateLimiter = shared_adapter(context, "rate_limiter", settings.rate_limit.limiter)
    events: EventSink = shared_adapter(context, "event_sink", settings.ingest.event_sink)
    candidates = context.shared.get("retriever")
    if recommend.retrieve_target:
        candidates = GrpcCandidateSource(
            recommend.retrieve_target, timeout_seconds=recommend.retrieve_timeout_ms / 1000
        )
        context.resources.push_async_callback(candidates.close)
    scorer = context.shared.get("candidate_scorer")
    if recommend.rank_target:
        scorer = GrpcScorer(recommend.rank_target, timeout_seconds=recommend.rank_timeout_ms / 1000)
        context.resources.push_async_callback(scorer.close)
    if candidates is None or scorer is None:
        raise ConfigurationError(
            "recommend needs retrieval and ranking: host them in the same process "
            "(`recsys serve embedded`) or set recommend.retrieve_target and recommend.rank_target"
        )
    pipeline = RecommendPipeline(
        recommend,
        features=features,
        metadata=metadata,
        cache=cache,
        candidates=candidates,
        scorer=scorer,
        limiter=limiter,
        metrics=RecommendMetrics(context.registry),
        rate_limit_timeout_ms=settings.rate_limit.timeout_ms,
        rate_limit_fail_open=settings.rate_limit.fail_open,
    )
    context.startup_hooks.append(lambda: _prepare(context, pipeline))
    context.shared["recommend_pipeline"] = pipeline
    context.shared["recommendation_cache"] = cache
    context.shared["event_sink"] = events
    servicer = RecommendServicer(
        recommend,
        pipeline,
        features=features,
        metadata=metadata,
        cache=cache,
        limiter=limiter,
        events=events,
    )
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: recommend_service_pb2_grpc.add_RecommendServiceServicer_to_server(
                servicer, server
            ),
        )
    ]


async def _prepare(context: ServiceContext, pipeline: RecommendPipeline) -> None:
    """Embedded SQLite is migrated in place; a server database must already be at head."""
    from recsys.metadata.database import is_sqlite
    from recsys.metadata.migrate import current_revision, upgrade

    database = context.settings.database
    if is_sqlite(database.url):
        await asyncio.to_thread(upgrade, database)
    else:
        revision = await asyncio.to_thread(current_revision, database)
        if revision != "0001":
            raise ConfigurationError(
                f"the metadata database is at revision {revision}; run `recsys db upgrade`"
            )
    await pipeline.refresh_default_embedding()
