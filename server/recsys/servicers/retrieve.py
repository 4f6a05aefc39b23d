"""RetrieveService: candidate generation over every index shard."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

import grpc
import numpy as np

from recsys.adapters.shards.grpc import GrpcShardClient
from recsys.adapters.shards.local import LocalShardClient
from recsys.domain.retrieval import RetrievalQuery, Retriever, RetrieverConfig
from recsys.domain.validation import Violations
from recsys.errors import NotFound, Unavailable
from recsys.grpc_server.app import ServiceBinding
from recsys.index.spec import MAX_EF_SEARCH, MAX_NPROBE
from recsys.observability.metrics import RetrievalMetrics
from recsys.ports.features import FeatureStore
from recsys.ports.shards import MAX_K, ShardClient
from recsys.servicers.convert import packed_floats
from recsys.settings import RecsysSettings
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2
from recsys.v1 import retrieve_service_pb2_grpc as retrieve_grpc

if TYPE_CHECKING:
    from recsys.composition import Components

SERVICE_NAME = retrieve_pb2.DESCRIPTOR.services_by_name["RetrieveService"].full_name
MAX_DIMENSION = 4096


class RetrieveServicer(retrieve_grpc.RetrieveServiceServicer):
    def __init__(
        self, retriever: Retriever, features: FeatureStore, settings: RecsysSettings
    ) -> None:
        self.retriever = retriever
        self.features = features
        self.settings = settings.retrieve

    async def Retrieve(  # noqa: N802
        self, request: retrieve_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieve_pb2.RetrieveResponse:
        violations = Violations()
        which = request.WhichOneof("query")
        if which is None:
            violations.add("query", "give user_id or query_vector")
        elif which == "user_id":
            violations.check_user_id("user_id", request.user_id)
        else:
            values = request.query_vector.values
            if not 1 <= len(values) <= MAX_DIMENSION:
                violations.add("query_vector.values", f"must hold 1 to {MAX_DIMENSION} floats")
            elif not np.isfinite(np.array(values, dtype=np.float32)).all():
                violations.add("query_vector.values", "must be finite numbers")
            if not request.query_vector.embedding_version:
                violations.add("query_vector.embedding_version", "is required")
        k = request.k or self.settings.default_k
        violations.check_range("k", k, 1, MAX_K)
        if len(request.excluded_item_ids) > self.settings.max_excluded_items:
            violations.add(
                "excluded_item_ids", f"must hold at most {self.settings.max_excluded_items} ids"
            )
        elif request.excluded_item_ids and min(request.excluded_item_ids) < 0:
            violations.add("excluded_item_ids", "must be non-negative")
        parameters = request.search_parameters
        if parameters.nprobe:
            violations.check_range("search_parameters.nprobe", parameters.nprobe, 1, MAX_NPROBE)
        if parameters.ef_search:
            violations.check_range(
                "search_parameters.ef_search", parameters.ef_search, 1, MAX_EF_SEARCH
            )
        violations.raise_if_any()

        if which == "user_id":
            embedding = await self.features.get_user_embedding(request.user_id)
            if embedding is None:
                raise NotFound(
                    f"user {request.user_id} has no embedding", reason="NO_USER_EMBEDDING"
                )
            vector, version = embedding.vector, embedding.embedding_version
        else:
            vector = np.array(request.query_vector.values, dtype=np.float32)
            version = request.query_vector.embedding_version
        result = await self.retriever.retrieve(
            RetrievalQuery(
                vector=vector,
                embedding_version=version,
                k=k,
                excluded_item_ids=frozenset(request.excluded_item_ids),
                nprobe=parameters.nprobe or None,
                ef_search=parameters.ef_search or None,
                require_all_shards=request.require_all_shards,
            )
        )
        response = retrieve_pb2.RetrieveResponse(
            index_version=result.index_version,
            embedding_version=result.embedding_version,
            partial=result.partial,
            failed_shard_ids=list(result.failed_shard_ids),
        )
        if request.response_layout == retrieve_pb2.CANDIDATE_LAYOUT_COLUMNS:
            # Packed columns: one extend per column instead of a sub-message per candidate.
            response.item_ids.extend(result.item_ids.tolist())
            response.shard_ids.extend(result.shard_ids.tolist())
            response.MergeFromString(
                packed_floats(retrieve_pb2.RetrieveResponse.SCORES_FIELD_NUMBER, result.scores)
            )
            return response
        add = response.candidates.add
        for item_id, score, shard_id in zip(
            result.item_ids.tolist(), result.scores.tolist(), result.shard_ids.tolist(), strict=True
        ):
            add(item_id=item_id, score=score, shard_id=shard_id)
        return response


def retriever_config(settings: RecsysSettings) -> RetrieverConfig:
    retrieve = settings.retrieve
    return RetrieverConfig(
        shard_timeout_seconds=retrieve.shard_timeout_ms / 1000,
        merge_reserve_seconds=retrieve.merge_reserve_ms / 1000,
        min_top_score=retrieve.min_top_score,
        shard_oversampling=retrieve.shard_oversampling,
        breaker_failure_threshold=retrieve.breaker_failure_threshold,
        breaker_open_seconds=retrieve.breaker_open_seconds,
        breaker_half_open_fraction=retrieve.breaker_half_open_fraction,
        breaker_success_threshold=retrieve.breaker_success_threshold,
    )


async def build(components: Components) -> list[ServiceBinding]:
    settings = components.settings
    shards: list[list[ShardClient]]
    if settings.retrieve.shard_targets:
        shards = [
            [GrpcShardClient(target, outbound=settings.outbound) for target in replicas]
            for replicas in settings.retrieve.shard_targets
        ]
    else:
        # Embedded: every shard in this process, loaded from the same snapshot store.
        hosts = [components.shard_host(shard) for shard in range(settings.index.num_shards)]
        shards = [[LocalShardClient(host)] for host in hosts]

        async def load_all() -> None:
            await asyncio.gather(*(host.start() for host in hosts))

        components.startup_hooks.append(load_all)
        if settings.index.snapshot_poll_seconds > 0:
            for host in hosts:
                components.run_in_background(
                    functools.partial(host.watch_current, settings.index.snapshot_poll_seconds)
                )
    retriever = Retriever(
        shards,
        config=retriever_config(settings),
        metrics=RetrievalMetrics(components.registry),
        breaker_metrics=components.breaker_metrics,
    )
    components.resources.push_async_callback(retriever.close)
    components.run_in_background(
        lambda: retriever.keep_description_fresh(settings.retrieve.describe_interval_seconds)
    )
    components.retriever = retriever
    timeout = settings.health.dependency_timeout_seconds

    async def probe_shards() -> None:
        silent = await retriever.silent_shards(timeout)
        if silent:
            raise Unavailable(f"no replica of shards {silent} answers", reason="NO_SHARDS")

    # Down while any shard has no replica answering: answers are partial.
    components.dependencies.register("index_shards", probe_shards)
    servicer = RetrieveServicer(retriever, components.feature_store, settings)
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: retrieve_grpc.add_RetrieveServiceServicer_to_server(servicer, server),
        )
    ]
