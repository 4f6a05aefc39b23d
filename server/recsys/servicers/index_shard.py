"""IndexShardService: one FAISS shard over gRPC (internal API)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import numpy as np

from recsys.adapters.shards.local import describe_host
from recsys.domain.validation import Violations
from recsys.errors import Unavailable
from recsys.grpc_server.app import ServiceBinding
from recsys.index.host import MAX_QUERIES, ShardHost
from recsys.v1 import index_shard_service_pb2 as shard_pb2
from recsys.v1 import index_shard_service_pb2_grpc as shard_grpc

if TYPE_CHECKING:
    from recsys.composition import Components

SERVICE_NAME = shard_pb2.DESCRIPTOR.services_by_name["IndexShardService"].full_name
MAX_BATCH_ITEMS = 100_000


def _optional(value: int) -> int | None:
    return value or None


class IndexShardServicer(shard_grpc.IndexShardServiceServicer):
    def __init__(self, host: ShardHost) -> None:
        self.host = host

    async def Search(  # noqa: N802
        self, request: shard_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.SearchResponse:
        dimension = self.host.spec.dimension
        violations = Violations()
        violations.check_range("query_count", request.query_count, 1, MAX_QUERIES)
        if len(request.query_vectors) != request.query_count * dimension:
            violations.add(
                "query_vectors",
                f"must hold query_count * {dimension} = {request.query_count * dimension} "
                f"floats, got {len(request.query_vectors)}",
            )
        violations.raise_if_any()
        queries = np.array(request.query_vectors, dtype=np.float32).reshape(-1, dimension)
        index, hits = await self.host.search(
            queries,
            request.k,
            embedding_version=request.embedding_version,
            nprobe=_optional(request.search_parameters.nprobe),
            ef_search=_optional(request.search_parameters.ef_search),
        )
        response = shard_pb2.SearchResponse(
            index_version=index.index_version, shard_id=self.host.shard_id
        )
        for query_hits in hits:
            result = response.results.add()
            result.item_ids.extend(query_hits.item_ids.tolist())
            result.scores.extend(query_hits.scores.tolist())
        return response

    async def Upsert(  # noqa: N802
        self, request: shard_pb2.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.UpsertResponse:
        dimension = self.host.spec.dimension
        violations = Violations()
        violations.check_range("item_ids", len(request.item_ids), 1, MAX_BATCH_ITEMS)
        if len(request.vectors) != len(request.item_ids) * dimension:
            violations.add("vectors", f"must hold len(item_ids) * {dimension} floats")
        violations.raise_if_any()
        written = await self.host.upsert(
            np.array(request.item_ids, dtype=np.int64),
            np.array(request.vectors, dtype=np.float32).reshape(-1, dimension),
            request.embedding_version,
        )
        return shard_pb2.UpsertResponse(
            upserted_count=written, item_count=self.host.current.item_count
        )

    async def Delete(  # noqa: N802
        self, request: shard_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.DeleteResponse:
        violations = Violations()
        violations.check_range("item_ids", len(request.item_ids), 1, MAX_BATCH_ITEMS)
        violations.raise_if_any()
        removed = await self.host.delete(np.array(request.item_ids, dtype=np.int64))
        return shard_pb2.DeleteResponse(
            deleted_count=removed, item_count=self.host.current.item_count
        )

    async def Info(  # noqa: N802
        self, request: shard_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.InfoResponse:
        described = describe_host(self.host)
        response = shard_pb2.InfoResponse(
            shard_id=described.shard_id,
            num_shards=described.num_shards,
            item_count=described.item_count,
            dimension=described.dimension,
            index_type=described.index_type,
            metric=described.metric,
            index_version=described.index_version,
            embedding_version=described.embedding_version,
            on_gpu=described.on_gpu,
            normalized=described.normalized,
        )
        if described.built_at is not None:
            response.built_at.FromDatetime(described.built_at)
        return response

    async def LoadSnapshot(  # noqa: N802
        self, request: shard_pb2.LoadSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.LoadSnapshotResponse:
        swap = await self.host.load_snapshot(request.index_version or None)
        return shard_pb2.LoadSnapshotResponse(
            index_version=swap.index_version,
            previous_index_version=swap.previous_index_version,
            item_count=swap.item_count,
        )


async def build(components: Components) -> list[ServiceBinding]:
    index = components.settings.index
    host = components.shard_host(index.shard_id)
    components.startup_hooks.append(host.start)
    components.dependencies.register("index", lambda: _probe_index(host))
    if index.snapshot_poll_seconds > 0:
        poll = index.snapshot_poll_seconds
        components.run_in_background(lambda: host.watch_current(poll))
    servicer = IndexShardServicer(host)
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: shard_grpc.add_IndexShardServiceServicer_to_server(servicer, server),
        )
    ]


async def _probe_index(host: ShardHost) -> None:
    """The shard's own index: loaded, and answering a one-vector search."""
    if not host.ready:
        raise Unavailable(f"shard {host.shard_id} is not serving its index", reason="SHARD_LOADING")
    query = np.zeros((1, host.spec.dimension), dtype=np.float32)
    await host.search(query, 1, embedding_version=host.current.embedding_version)
