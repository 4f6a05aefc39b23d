"""Retriever fan-out over real in-process shards, with failure-injecting replicas."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from recsys.adapters.shards.local import LocalShardClient
from recsys.data.synthetic import clustered_embeddings
from recsys.deadlines import request_deadline
from recsys.domain.retrieval import RetrievalQuery, Retriever, RetrieverConfig
from recsys.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from recsys.index.host import ShardHost
from recsys.index.shard_index import ShardIndex
from recsys.index.spec import IndexSpec, IndexType
from recsys.ports.shards import SearchHits, ShardClient, ShardDescription, ShardSearchResult

NUM_SHARDS = 4
DIMENSION = 16


@pytest.fixture(scope="module")
def data():
    return clustered_embeddings(4_000, DIMENSION, clusters=16, seed=9)


async def hosts_for(data) -> list[ShardHost]:
    return await hosts_over(data.item_ids, data.vectors)


async def hosts_over(ids: np.ndarray, vectors: np.ndarray) -> list[ShardHost]:
    """One in-process flat shard per `id % NUM_SHARDS`, loaded."""
    spec = IndexSpec(dimension=DIMENSION, index_type=IndexType.FLAT)
    hosts = []
    for shard_id in range(NUM_SHARDS):
        mine = ids % NUM_SHARDS == shard_id
        host = ShardHost(spec, shard_id=shard_id, num_shards=NUM_SHARDS, snapshots=None)
        host.current = ShardIndex.build(
            spec, shard_id=shard_id, num_shards=NUM_SHARDS, item_ids=ids[mine],
            vectors=vectors[mine], index_version="v1", embedding_version="e1",
        )  # fmt: skip
        await host.start()
        hosts.append(host)
    return hosts


class Broken(ShardClient):
    """A replica that fails: UNAVAILABLE, or too slow for any deadline."""

    def __init__(self, inner: LocalShardClient, mode: str) -> None:
        self.inner, self.mode, self.calls = inner, mode, 0
        self.endpoint = f"broken-{mode}"

    async def search(self, queries, k, **kwargs) -> ShardSearchResult:  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.mode == "unavailable":
            raise Unavailable("down")
        if self.mode == "slow":
            await asyncio.sleep(kwargs["timeout"])
            raise DeadlineExceeded("too slow")
        result = await self.inner.search(queries, k, **kwargs)
        if self.mode == "empty":
            empty = SearchHits(np.empty(0, np.int64), np.empty(0, np.float32))
            return ShardSearchResult(result.shard_id, result.index_version, [empty])
        return result

    async def describe(self, *, timeout: float) -> ShardDescription:
        return await self.inner.describe(timeout=timeout)


def exact_top(data, query: np.ndarray, k: int, shards: set[int] | None = None) -> list[int]:
    scores = data.vectors @ query
    if shards is not None:
        scores = np.where(np.isin(data.item_ids % NUM_SHARDS, list(shards)), scores, -np.inf)
    return data.item_ids[np.argsort(-scores)[:k]].tolist()


def query_for(data, k: int = 50, **changes: object) -> RetrievalQuery:
    fields = {"vector": data.queries(1, seed=42)[0], "embedding_version": "e1", "k": k}
    fields.update(changes)
    return RetrievalQuery(**fields)  # type: ignore[arg-type]


async def test_merged_top_k_equals_exact_search_and_respects_routing(data) -> None:
    hosts = await hosts_for(data)
    retriever = Retriever([[LocalShardClient(h)] for h in hosts])
    query = query_for(data)
    result = await retriever.retrieve(query)
    assert result.item_ids.tolist() == exact_top(data, query.vector, 50)
    assert np.all(result.item_ids % NUM_SHARDS == result.shard_ids)
    assert np.all(np.diff(result.scores) <= 0)
    assert not result.partial
    assert result.index_version == "v1"


async def test_excluded_items_are_filtered_and_k_still_filled(data) -> None:
    hosts = await hosts_for(data)
    retriever = Retriever([[LocalShardClient(h)] for h in hosts])
    query = query_for(data)
    excluded = frozenset(exact_top(data, query.vector, 20))
    result = await retriever.retrieve(query_for(data, excluded_item_ids=excluded))
    assert len(result.item_ids) == 50
    assert not excluded & set(result.item_ids.tolist())
    assert result.item_ids.tolist() == exact_top(data, query.vector, 70)[20:]


async def test_a_failed_shard_gives_a_flagged_partial_answer(data) -> None:
    hosts = await hosts_for(data)
    shards = [[LocalShardClient(h)] for h in hosts]
    shards[2] = [Broken(shards[2][0], "unavailable")]
    retriever = Retriever(shards)
    query = query_for(data)
    result = await retriever.retrieve(query)
    assert result.failed_shard_ids == (2,)
    assert result.item_ids.tolist() == exact_top(data, query.vector, 50, {0, 1, 3})
    with pytest.raises(Unavailable) as caught:
        await retriever.retrieve(query_for(data, require_all_shards=True))
    assert caught.value.metadata["failed_shard_ids"] == "2"


async def test_replica_failover_hides_a_dead_replica(data) -> None:
    hosts = await hosts_for(data)
    shards = [[LocalShardClient(h)] for h in hosts]
    dead = Broken(shards[1][0], "unavailable")
    shards[1] = [dead, shards[1][0]]
    # A generous shard timeout: this is about failover, and a loaded machine must not turn a
    # slow answer of the live replica into one more failure.
    config = RetrieverConfig(breaker_open_seconds=60, shard_timeout_seconds=5.0)
    retriever = Retriever(shards, config=config)
    for _ in range(14):
        result = await retriever.retrieve(query_for(data))
        assert not result.partial
    # Calls alternate which replica goes first; five failures opened the dead replica's
    # breaker, and the two times it was first after that it was skipped without a call.
    assert dead.calls == 5


async def test_slow_replica_costs_at_most_the_shard_timeout(data) -> None:
    hosts = await hosts_for(data)
    shards = [[LocalShardClient(h)] for h in hosts]
    slow = Broken(shards[3][0], "slow")
    shards[3] = [slow, shards[3][0]]
    retriever = Retriever(shards, config=RetrieverConfig(shard_timeout_seconds=0.05))
    started = asyncio.get_running_loop().time()
    with request_deadline(1.0):
        result = await retriever.retrieve(query_for(data))
    assert not result.partial
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_sanity_check_asks_another_replica(data) -> None:
    hosts = await hosts_for(data)
    shards = [[LocalShardClient(h)] for h in hosts]
    empty = Broken(shards[0][0], "empty")
    shards[0] = [empty, shards[0][0]]
    retriever = Retriever(shards)
    query = query_for(data)
    for _ in range(2):  # the replica order rotates; both orders must give the full answer
        result = await retriever.retrieve(query)
        assert result.item_ids.tolist() == exact_top(data, query.vector, 50)


async def test_version_and_dimension_mismatch_are_failed_precondition(data) -> None:
    hosts = await hosts_for(data)
    retriever = Retriever([[LocalShardClient(h)] for h in hosts])
    with pytest.raises(FailedPrecondition) as caught:
        await retriever.retrieve(query_for(data, embedding_version="e0"))
    assert caught.value.reason == "EMBEDDING_VERSION_MISMATCH"
    with pytest.raises(FailedPrecondition) as caught:
        await retriever.retrieve(query_for(data, vector=np.ones(8, np.float32)))
    assert caught.value.reason == "DIMENSION_MISMATCH"


async def test_all_shards_down_is_unavailable(data) -> None:
    hosts = await hosts_for(data)
    shards = [[Broken(LocalShardClient(h), "unavailable")] for h in hosts]
    retriever = Retriever(shards)
    with pytest.raises(Unavailable):
        await retriever.retrieve(query_for(data))


async def test_top_k_stays_exact_when_one_shard_holds_most_of_it() -> None:
    """The shallow first round would miss items here; the deeper second round must not."""
    rng = np.random.default_rng(4)
    target = rng.normal(size=DIMENSION).astype(np.float32)
    target /= np.linalg.norm(target)
    ids = np.arange(4_000, dtype=np.int64)
    vectors = rng.normal(size=(4_000, DIMENSION)).astype(np.float32)
    near = ids % NUM_SHARDS == 0  # every item close to the target lives in shard 0
    vectors[near] = target + 0.05 * rng.normal(size=(near.sum(), DIMENSION))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hosts = await hosts_over(ids, vectors)
    retriever = Retriever(
        [[LocalShardClient(host)] for host in hosts],
        config=RetrieverConfig(shard_oversampling=2.0),
    )
    result = await retriever.retrieve(RetrievalQuery(target, "e1", 100))
    expected = ids[np.argsort(-(vectors @ target))[:100]].tolist()
    assert result.item_ids.tolist() == expected
    assert set(result.shard_ids.tolist()) == {0}


async def test_a_loading_shard_does_not_define_the_index(data) -> None:
    hosts = await hosts_for(data)
    loading = ShardHost(
        IndexSpec(dimension=DIMENSION, index_type=IndexType.FLAT),
        shard_id=1, num_shards=NUM_SHARDS, snapshots=None,
    )  # fmt: skip  # an empty index, no version, built "now"
    shards = [[LocalShardClient(h)] for h in hosts]
    shards[1] = [LocalShardClient(loading)]
    retriever = Retriever(shards)
    description = await retriever.refresh_description()
    assert description is not None
    assert description.embedding_version == "e1"
    assert description.index_versions == ("", "v1")


async def test_ties_across_shards_merge_by_item_id() -> None:
    # Every item has the same vector: the merged top k is the k lowest ids, from all shards.
    ids = np.arange(400, dtype=np.int64)[::-1].copy()
    hosts = await hosts_over(ids, np.ones((400, DIMENSION), np.float32))
    retriever = Retriever([[LocalShardClient(h)] for h in hosts])
    query = RetrievalQuery(vector=np.ones(DIMENSION, np.float32), embedding_version="e1", k=30)
    result = await retriever.retrieve(query)
    assert result.item_ids.tolist() == list(range(30))
    excluded = await retriever.retrieve(
        RetrievalQuery(
            vector=query.vector, embedding_version="e1", k=5, excluded_item_ids=frozenset({0, 2})
        )
    )
    assert excluded.item_ids.tolist() == [1, 3, 4, 5, 6]


class Retries:
    def __init__(self) -> None:
        self.sanity = 0

    def shard_searched(self, shard_id: int, seconds: float) -> None: ...

    def shard_failed(self, shard_id: int, reason: str) -> None: ...

    def sanity_retry(self, shard_id: int) -> None:
        self.sanity += 1

    def partial_result(self) -> None: ...


@pytest.mark.parametrize("normalize", [True, False])
async def test_the_top_score_check_fits_the_metric_and_needs_another_replica(
    normalize: bool,
) -> None:
    # Every score is low (0.01): a broken replica in a cosine index, normal for raw ALS scores.
    spec = IndexSpec(dimension=DIMENSION, index_type=IndexType.FLAT, normalize=normalize)
    ids = np.arange(40, dtype=np.int64)
    vectors = np.zeros((40, DIMENSION), np.float32)
    vectors[:, 0], vectors[:, 1] = 0.01, 1.0
    query_vector = np.zeros(DIMENSION, np.float32)
    query_vector[0] = 1.0
    replicas = []
    for _ in range(2):
        host = ShardHost(spec, shard_id=0, num_shards=1, snapshots=None)
        host.current = ShardIndex.build(
            spec, shard_id=0, num_shards=1, item_ids=ids, vectors=vectors,
            index_version="v1", embedding_version="e1",
        )  # fmt: skip
        await host.start()
        replicas.append(LocalShardClient(host))
    query = RetrievalQuery(vector=query_vector, embedding_version="e1", k=5)
    single, observed = Retries(), Retries()
    alone = await Retriever([[replicas[0]]], metrics=single).retrieve(query)
    assert len(alone.item_ids) == 5
    assert single.sanity == 0  # no other replica: nothing to ask, no wasted retry
    pair = await Retriever([replicas], metrics=observed).retrieve(query)
    assert len(pair.item_ids) == 5
    assert observed.sanity == (1 if normalize else 0)
