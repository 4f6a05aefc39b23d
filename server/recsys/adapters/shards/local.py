"""A shard in this process: the embedded mode's Retrieve searches it with no network hop."""

from __future__ import annotations

import asyncio

import numpy as np

from recsys.errors import DeadlineExceeded
from recsys.index.host import ShardHost
from recsys.ports.shards import ShardClient, ShardDescription, ShardSearchResult


class LocalShardClient(ShardClient):
    def __init__(self, host: ShardHost) -> None:
        self.host = host
        self.endpoint = f"local:{host.shard_id}"

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
        try:
            async with asyncio.timeout(timeout):
                index, hits = await self.host.search(
                    queries,
                    k,
                    embedding_version=embedding_version,
                    nprobe=nprobe,
                    ef_search=ef_search,
                )
        except TimeoutError:
            raise DeadlineExceeded(f"shard {self.host.shard_id} did not answer in time") from None
        return ShardSearchResult(self.host.shard_id, index.index_version, hits)

    async def describe(self, *, timeout: float) -> ShardDescription:
        return describe_host(self.host)


def describe_host(host: ShardHost) -> ShardDescription:
    index = host.current
    return ShardDescription(
        shard_id=host.shard_id,
        num_shards=host.num_shards,
        item_count=index.item_count,
        dimension=index.spec.dimension,
        index_type=index.spec.index_type.value,
        metric=index.spec.metric.value,
        index_version=index.index_version,
        embedding_version=index.embedding_version,
        built_at=index.built_at,
        on_gpu=index.on_gpu,
        normalized=index.spec.normalize,
    )
