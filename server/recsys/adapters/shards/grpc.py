"""A remote shard replica: IndexShardService over gRPC."""

from __future__ import annotations

import datetime as dt

import numpy as np

from recsys.adapters.channels import outbound_channel, reconnect_options
from recsys.adapters.grpc_errors import call
from recsys.ports.shards import SearchHits, ShardClient, ShardDescription, ShardSearchResult
from recsys.settings import OutboundSettings
from recsys.v1 import index_shard_service_pb2, index_shard_service_pb2_grpc, retrieve_service_pb2

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Replica failover is the Retriever's job; the channel must not retry on its own.
    ("grpc.enable_retries", 0),
    *reconnect_options(max_backoff_ms=2000),
]


class GrpcShardClient(ShardClient):
    def __init__(self, target: str, *, outbound: OutboundSettings | None = None) -> None:
        self.endpoint = target
        self._channel = outbound_channel(
            target, "shards", outbound or OutboundSettings(), options=CHANNEL_OPTIONS
        )
        self._stub = index_shard_service_pb2_grpc.IndexShardServiceStub(self._channel)
        self._what = f"shard replica {target}"

    async def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        embedding_version: str,
        nprobe: int | None,
        ef_search: int | None,
        timeout: float,
    ) -> ShardSearchResult:
        request = index_shard_service_pb2.SearchRequest(
            query_vectors=np.asarray(queries, dtype=np.float32).ravel().tolist(),
            query_count=len(queries),
            k=k,
            embedding_version=embedding_version,
            search_parameters=retrieve_service_pb2.SearchParameters(
                nprobe=nprobe or 0, ef_search=ef_search or 0
            ),
        )
        response = await call(self._what, self._stub.Search(request, timeout=timeout))
        hits = [
            SearchHits(
                np.array(result.item_ids, dtype=np.int64),
                np.array(result.scores, dtype=np.float32),
            )
            for result in response.results
        ]
        return ShardSearchResult(response.shard_id, response.index_version, hits)

    async def describe(self, *, timeout: float) -> ShardDescription:
        info = await call(
            self._what, self._stub.Info(index_shard_service_pb2.InfoRequest(), timeout=timeout)
        )
        return ShardDescription(
            shard_id=info.shard_id,
            num_shards=info.num_shards,
            item_count=info.item_count,
            dimension=info.dimension,
            index_type=info.index_type,
            metric=info.metric,
            index_version=info.index_version,
            embedding_version=info.embedding_version,
            built_at=(
                info.built_at.ToDatetime(tzinfo=dt.UTC) if info.HasField("built_at") else None
            ),
            on_gpu=info.on_gpu,
            normalized=info.normalized,
        )

    async def close(self) -> None:
        await self._channel.close()
