"""RankService: scores candidates for a user with the model, behind the breaker and fallbacks."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import grpc
import numpy as np

from recsys.domain.circuit_breaker import CircuitBreaker
from recsys.domain.ranking import Backend, RankingChain
from recsys.domain.scoring import CandidateScorer
from recsys.domain.validation import Violations
from recsys.errors import ConfigurationError, FailedPrecondition, RecsysError
from recsys.grpc_server.app import ServiceBinding
from recsys.observability.metrics import RankingMetrics
from recsys.ports.ranker import Ranker
from recsys.servicers.convert import request_context_from_proto
from recsys.settings import RankSettings
from recsys.v1 import common_pb2
from recsys.v1 import rank_service_pb2 as rank_pb2
from recsys.v1 import rank_service_pb2_grpc as rank_grpc

if TYPE_CHECKING:
    from recsys.composition import Components

logger = logging.getLogger(__name__)

SERVICE_NAME = rank_pb2.DESCRIPTOR.services_by_name["RankService"].full_name

BACKENDS = {
    Backend.MODEL: common_pb2.RANKING_BACKEND_MODEL,
    Backend.CPU_MODEL: common_pb2.RANKING_BACKEND_CPU_MODEL,
    Backend.RULE_FALLBACK: common_pb2.RANKING_BACKEND_RULE_FALLBACK,
}


class RankServicer(rank_grpc.RankServiceServicer):
    def __init__(self, scorer: CandidateScorer, settings: RankSettings) -> None:
        self.scorer = scorer
        self.settings = settings

    async def Rank(  # noqa: N802
        self, request: rank_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> rank_pb2.RankResponse:
        count = len(request.candidates)
        item_ids = np.fromiter((c.item_id for c in request.candidates), np.int64, count)
        scores = np.fromiter((c.candidate_score for c in request.candidates), np.float32, count)
        violations = Violations()
        violations.check_user_id("user_id", request.user_id)
        violations.check_range("candidates", count, 1, self.settings.max_candidates)
        if count:
            if item_ids.min() < 0:
                violations.add("candidates", "item ids must be non-negative")
            if len(np.unique(item_ids)) != count:
                violations.add("candidates", "item ids must be unique")
            if not np.isfinite(scores).all():
                violations.add("candidates", "candidate scores must be finite")
        violations.raise_if_any()
        scored = await self.scorer.score(
            request.user_id, item_ids, scores, request_context_from_proto(request.context)
        )
        response = rank_pb2.RankResponse(
            model_version=scored.model_version,
            backend=BACKENDS[scored.backend],
            default_features=scored.default_features,
        )
        add = response.items.add  # twice as fast as building ScoredItem objects to extend with
        for item_id, score in zip(scored.item_ids.tolist(), scored.scores.tolist(), strict=True):
            add(item_id=item_id, score=score)
        return response


def _breaker(components: Components, settings: RankSettings) -> CircuitBreaker:
    metrics = components.breaker_metrics
    metrics.track("ranking-model")
    return CircuitBreaker(
        "ranking-model",
        failure_threshold=settings.breaker_failure_threshold,
        open_seconds=settings.breaker_open_seconds,
        half_open_fraction=settings.breaker_half_open_fraction,
        success_threshold=settings.breaker_success_threshold,
        on_transition=lambda name, _, state: metrics.record(name, state.value),
    )


async def build(components: Components) -> list[ServiceBinding]:
    rank = components.settings.rank
    try:
        primary = components.ranker(rank.backend)
        # A model behind a server gets the in-process model as its CPU fallback.
        cpu_model = (
            components.ranker("onnx") if rank.cpu_fallback and not primary.in_process else None
        )
    except RecsysError as error:
        raise ConfigurationError(f"cannot load the ranking model: {error.message}") from error
    components.startup_hooks.append(functools.partial(_start_or_warn, primary))
    if not primary.in_process:
        components.dependencies.register(
            "model_server",
            functools.partial(
                primary.ping, timeout=components.settings.health.dependency_timeout_seconds
            ),
        )
    if rank.reload_poll_seconds > 0:
        for model in (primary, cpu_model):
            if model is not None:
                components.run_in_background(
                    functools.partial(model.watch, rank.reload_poll_seconds)
                )
    metrics = RankingMetrics(components.registry, features=components.feature_store_metrics)
    chain = RankingChain(
        primary,
        breaker=_breaker(components, rank),
        cpu_model=cpu_model,
        timeout_seconds=rank.timeout_ms / 1000,
        metrics=metrics,
    )
    components.ranking_chain = chain
    scorer = CandidateScorer(
        chain,
        components.feature_store,
        feature_timeout_seconds=rank.feature_timeout_ms / 1000,
        metrics=metrics,
    )
    components.candidate_scorer = scorer
    servicer = RankServicer(scorer, rank)
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: rank_grpc.add_RankServiceServicer_to_server(servicer, server),
        )
    ]


async def _start_or_warn(model: Ranker) -> None:
    """A model server that is down at startup is not fatal (the breaker routes around it); a
    model whose schema does not match is."""
    try:
        await model.start()
    except FailedPrecondition as error:
        raise ConfigurationError(f"ranking model refused: {error.message}") from error
    except RecsysError as error:
        logger.warning("model server unreachable at startup", extra={"error": error.message})
