"""ShardIndex on real FAISS indexes of every supported type."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data.synthetic import clustered_embeddings
from recsys.errors import FailedPrecondition, InvalidArgument
from recsys.index.shard_index import ShardIndex
from recsys.index.spec import IndexSpec, IndexType, Metric

NUM_SHARDS = 4
SHARD_ID = 1
DIMENSION = 16
ALL_TYPES = list(IndexType)


def spec_for(index_type: IndexType, metric: Metric = Metric.INNER_PRODUCT) -> IndexSpec:
    return IndexSpec(
        dimension=DIMENSION,
        index_type=index_type,
        metric=metric,
        normalize=metric is Metric.INNER_PRODUCT,
        nlist=16,
        nprobe=16,  # every list: exact up to quantization, so assertions are deterministic
        pq_m=4,
        pq_nbits=6,
        ef_search=256,
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    embeddings = clustered_embeddings(8_000, DIMENSION, clusters=32, seed=3)
    mine = embeddings.item_ids % NUM_SHARDS == SHARD_ID
    return embeddings.item_ids[mine], embeddings.vectors[mine]


def build(
    index_type: IndexType, data: tuple[np.ndarray, np.ndarray], **kwargs: object
) -> ShardIndex:
    ids, vectors = data
    return ShardIndex.build(
        spec_for(index_type, **kwargs),  # type: ignore[arg-type]
        shard_id=SHARD_ID,
        num_shards=NUM_SHARDS,
        item_ids=ids,
        vectors=vectors,
        index_version="v1",
        embedding_version="e1",
    )


@pytest.mark.parametrize("index_type", ALL_TYPES)
def test_an_item_finds_itself_first(index_type: IndexType, data) -> None:
    shard = build(index_type, data)
    ids, vectors = data
    assert shard.item_count == len(ids)
    hits = shard.search(vectors[:20], 5)
    if index_type is IndexType.IVF_PQ:
        # PQ codes are lossy: neighbours can outrank an item, but it stays near the top.
        near_top = sum(int(item in h.item_ids) for h, item in zip(hits, ids[:20], strict=True))
        assert near_top >= 15
    else:
        assert [int(h.item_ids[0]) for h in hits] == ids[:20].tolist()
    for h in hits:
        assert np.all(np.diff(h.scores) <= 1e-6), "scores must be sorted best first"


@pytest.mark.parametrize("index_type", ALL_TYPES)
def test_upsert_replaces_and_delete_removes(index_type: IndexType, data) -> None:
    shard = build(index_type, data)
    ids, vectors = data
    target, donor = int(ids[0]), vectors[100]
    count = shard.item_count
    # Replace the target's vector with another item's: the target now answers that query.
    assert shard.upsert([target], donor[None, :]) == 1
    assert shard.item_count == count
    top = shard.search(donor[None, :], 10)[0].item_ids.tolist()
    assert target in top
    assert shard.search(vectors[0][None, :], 50)[0].item_ids.tolist().count(target) <= 1
    assert shard.delete([target, 999_999_995]) == 1  # the absent id is ignored
    assert shard.item_count == count - 1
    assert target not in shard.search(donor[None, :], 10)[0].item_ids.tolist()
    assert target not in set(shard.item_ids().tolist())


@pytest.mark.parametrize("index_type", ALL_TYPES)
def test_items_of_other_shards_are_refused(index_type: IndexType, data) -> None:
    shard = build(index_type, data)
    with pytest.raises(FailedPrecondition) as caught:
        shard.upsert([4, 5], np.ones((2, DIMENSION), np.float32))
    assert caught.value.reason == "WRONG_SHARD"
    assert shard.item_count == len(data[0])


@pytest.mark.parametrize("index_type", ALL_TYPES)
def test_k_larger_than_the_shard_has_no_padding(index_type: IndexType) -> None:
    ids = np.array([1, 5, 9], dtype=np.int64)
    vectors = np.random.default_rng(0).normal(size=(3, DIMENSION)).astype(np.float32)
    spec = spec_for(index_type)
    if spec.is_ivf:
        spec = spec.model_copy(update={"nlist": 1, "pq_nbits": 4, "pq_m": 4})
        vectors = np.random.default_rng(0).normal(size=(3, DIMENSION)).astype(np.float32)
        # IVF needs training data; train on a larger batch first, then keep three items.
        extra = np.arange(13, 13 + 4 * 64, 4, dtype=np.int64)
        training = np.random.default_rng(1).normal(size=(len(extra), DIMENSION))
        shard = ShardIndex.build(
            spec, shard_id=SHARD_ID, num_shards=NUM_SHARDS, item_ids=extra,
            vectors=training, index_version="v", embedding_version="e",
        )  # fmt: skip
        shard.delete(extra)
        shard.upsert(ids, vectors)
    else:
        shard = ShardIndex.build(
            spec, shard_id=SHARD_ID, num_shards=NUM_SHARDS, item_ids=ids,
            vectors=vectors, index_version="v", embedding_version="e",
        )  # fmt: skip
    hits = shard.search(vectors[:1], 2000)[0]
    assert sorted(hits.item_ids.tolist()) == [1, 5, 9]
    assert len(hits.scores) == 3


def test_empty_index_answers_empty(data) -> None:
    shard = ShardIndex.empty(
        spec_for(IndexType.FLAT), shard_id=1, num_shards=4, embedding_version="e"
    )
    hits = shard.search(np.ones((2, DIMENSION), np.float32), 10)
    assert [len(h.item_ids) for h in hits] == [0, 0]


def test_untrained_ivf_refuses_too_small_a_first_batch() -> None:
    shard = ShardIndex.empty(
        spec_for(IndexType.IVF_FLAT), shard_id=1, num_shards=4, embedding_version="e"
    )
    with pytest.raises(FailedPrecondition) as caught:
        shard.upsert([1, 5], np.ones((2, DIMENSION), np.float32))
    assert caught.value.reason == "INDEX_UNTRAINED"


def test_l2_scores_are_negated_distances(data) -> None:
    shard = build(IndexType.FLAT, data, metric=Metric.L2)
    ids, vectors = data
    hits = shard.search(vectors[:1], 3)[0]
    expected = -np.sum((vectors[np.searchsorted(ids, hits.item_ids)] - vectors[0]) ** 2, axis=1)
    np.testing.assert_allclose(hits.scores, expected, rtol=1e-4, atol=1e-5)
    assert hits.item_ids[0] == ids[0]


@pytest.mark.parametrize("index_type", ALL_TYPES)
def test_snapshot_files_round_trip(index_type: IndexType, data) -> None:
    shard = build(index_type, data)
    shard.delete(data[0][:10])  # HNSW: tombstones, dropped by compaction on the way out
    files = shard.to_files()
    restored = ShardIndex.from_files(
        files, shard.spec, shard_id=SHARD_ID, num_shards=NUM_SHARDS,
        index_version="v1", embedding_version="e1", built_at=shard.built_at,
    )  # fmt: skip
    assert restored.item_count == shard.item_count
    assert sorted(restored.item_ids().tolist()) == sorted(shard.item_ids().tolist())
    queries = data[1][20:25]
    for before, after in zip(shard.search(queries, 10), restored.search(queries, 10), strict=True):
        assert before.item_ids.tolist() == after.item_ids.tolist()


def test_bad_input_is_invalid_argument(data) -> None:
    shard = build(IndexType.FLAT, data)
    with pytest.raises(InvalidArgument):
        shard.upsert([1, 1], np.ones((2, DIMENSION), np.float32))
    with pytest.raises(InvalidArgument):
        shard.upsert([1], np.full((1, DIMENSION), np.nan, np.float32))
    with pytest.raises(InvalidArgument):
        shard.delete([-1])
    with pytest.raises(FailedPrecondition) as caught:
        shard.search(np.ones((1, DIMENSION + 1), np.float32), 5)
    assert caught.value.reason == "DIMENSION_MISMATCH"


def test_ivf_pq_needs_a_dividing_sub_quantizer_count() -> None:
    with pytest.raises(ValueError, match="divide"):
        IndexSpec(dimension=10, index_type=IndexType.IVF_PQ, pq_m=4)


@pytest.mark.parametrize("index_type", [IndexType.FLAT, IndexType.IVF_FLAT, IndexType.HNSW])
def test_tied_scores_are_ordered_by_item_id_and_the_cut_off_takes_the_lowest_ids(
    index_type: IndexType,
) -> None:
    # 40 items of this shard share one vector, the other 60 lie farther from the query.
    rng = np.random.default_rng(4)
    # Inserted out of id order, so FAISS's own choice among ties is not the id order.
    ids = rng.permutation(100).astype(np.int64) * NUM_SHARDS + SHARD_ID
    vectors = rng.normal(size=(100, DIMENSION)).astype(np.float32) * 0.1
    shared = np.zeros(DIMENSION, np.float32)
    shared[0] = 1.0
    tied = rng.permutation(100)[:40]
    vectors[tied] = shared
    shard = ShardIndex.build(
        spec_for(index_type),
        shard_id=SHARD_ID,
        num_shards=NUM_SHARDS,
        item_ids=ids,
        vectors=vectors,
        index_version="v1",
        embedding_version="e1",
    )
    (hits,) = shard.search(shared.reshape(1, -1), 25)
    assert hits.item_ids.tolist() == sorted(ids[tied].tolist())[:25]
    assert len(set(hits.scores.tolist())) == 1


def test_a_tie_at_the_cut_does_not_search_the_whole_shard() -> None:
    # Two items share the best vector; k=1 cuts between them. The search must widen only until
    # the tied group is inside the window, not double up to every item.
    rng = np.random.default_rng(8)
    ids = np.arange(20_000, dtype=np.int64) * NUM_SHARDS + SHARD_ID
    vectors = rng.normal(size=(20_000, DIMENSION)).astype(np.float32) * 0.01
    vectors[[5, 17]] = 1.0
    shard = ShardIndex.build(
        spec_for(IndexType.FLAT),
        shard_id=SHARD_ID,
        num_shards=NUM_SHARDS,
        item_ids=ids,
        vectors=vectors,
        index_version="v1",
        embedding_version="e1",
    )
    depths: list[int] = []
    search = shard.faiss_index.search

    def counting(matrix, k, params=None):  # type: ignore[no-untyped-def]
        depths.append(k)
        return search(matrix, k, params=params)

    shard._search_index = type("Counting", (), {"search": staticmethod(counting)})()
    (hits,) = shard.search(np.ones((1, DIMENSION), np.float32), 1)
    assert hits.item_ids.tolist() == [ids[5]]  # the lower id of the tied pair
    assert depths == [2, 4]  # 2 ties at the cut; 4 shows the tie ends
