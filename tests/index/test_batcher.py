"""The search batcher: searches submitted in one loop turn run as at most `lanes` executor jobs,
each search settling its own future (result, error or cancellation)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from recsys.adapters.shards.local import LocalShardClient
from recsys.data.synthetic import clustered_embeddings
from recsys.domain.retrieval import RetrievalQuery, Retriever
from recsys.index.batcher import SearchBatcher
from recsys.index.host import ShardHost
from recsys.index.quantizer import train_shared_index
from recsys.index.shard_index import ShardIndex
from recsys.index.spec import IndexSpec, IndexType


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.jobs = 0

    def submit(
        self, function: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        self.jobs += 1
        return super().submit(function, *args, **kwargs)


@pytest.fixture
def executor() -> Any:
    pool = CountingExecutor()
    yield pool
    pool.shutdown()


def job(value: int) -> Callable[[], int]:
    return lambda: value * value


def failing() -> int:
    raise ValueError("broken shard")


async def test_one_turn_of_searches_runs_in_at_most_lanes_jobs(executor: CountingExecutor) -> None:
    batcher = SearchBatcher(executor, lanes=3)
    results = await asyncio.gather(*(batcher.submit(job(value)) for value in range(10)))
    assert results == [value * value for value in range(10)]
    assert executor.jobs == 3
    assert await batcher.submit(job(4)) == 16  # a later turn: one more job
    assert executor.jobs == 4


async def test_a_failing_search_fails_only_its_own_future(executor: CountingExecutor) -> None:
    batcher = SearchBatcher(executor, lanes=1)
    outcomes = await asyncio.gather(
        batcher.submit(job(2)), batcher.submit(failing), batcher.submit(job(3)),
        return_exceptions=True,
    )  # fmt: skip
    assert outcomes[0] == 4
    assert outcomes[2] == 9
    assert isinstance(outcomes[1], ValueError)


async def test_a_cancelled_search_leaves_the_others_alone(executor: CountingExecutor) -> None:
    batcher = SearchBatcher(executor, lanes=1)
    abandoned = batcher.submit(job(5))
    kept = batcher.submit(job(6))
    abandoned.cancel()
    assert await kept == 36
    assert abandoned.cancelled()


async def test_a_shut_down_executor_fails_the_searches() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.shutdown()
    batcher = SearchBatcher(pool, lanes=2)
    with pytest.raises(RuntimeError):
        await batcher.submit(job(1))
    with pytest.raises(ValueError, match="lane"):
        SearchBatcher(pool, lanes=0)


async def test_batched_in_process_shards_answer_like_unbatched_ones(
    executor: CountingExecutor,
) -> None:
    data = clustered_embeddings(3_000, 16, clusters=12, spread=1.0, seed=4)
    spec = IndexSpec(dimension=16, index_type=IndexType.IVF_FLAT, nlist=16, nprobe=4)
    trained = train_shared_index(spec, data.vectors)
    shards = [
        ShardIndex.build(
            spec, shard_id=shard, num_shards=3, item_ids=data.item_ids[shard::3],
            vectors=data.vectors[shard::3], index_version="v1", embedding_version="emb-1",
            trained_index=trained,
        )
        for shard in range(3)
    ]  # fmt: skip

    def retriever(batcher: SearchBatcher | None) -> Retriever:
        hosts = []
        for shard in shards:
            host = ShardHost(
                spec, shard_id=shard.shard_id, num_shards=3, snapshots=None,
                executor=executor, batcher=batcher,
            )  # fmt: skip
            host.current = shard
            host.ready = True
            hosts.append(host)
        return Retriever([[LocalShardClient(host)] for host in hosts])

    batched = retriever(SearchBatcher(executor, lanes=2))
    plain = retriever(None)
    for query in data.queries(5, seed=1):
        expected = await plain.retrieve(RetrievalQuery(query, "emb-1", 100))
        jobs = executor.jobs
        found = await batched.retrieve(RetrievalQuery(query, "emb-1", 100))
        assert executor.jobs - jobs <= 4  # two lanes per round, at most two rounds
        np.testing.assert_array_equal(found.item_ids, expected.item_ids)
        np.testing.assert_array_equal(found.scores, expected.scores)
