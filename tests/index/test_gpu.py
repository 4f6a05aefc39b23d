"""GPU shards (marker `gpu`): run on a machine with a CUDA device and a FAISS GPU build, e.g.
`pytest -m gpu tests/index/test_gpu.py`. Deselected everywhere else (see pyproject addopts)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data.synthetic import clustered_embeddings
from recsys.index.faiss_module import faiss
from recsys.index.shard_index import ShardIndex
from recsys.index.spec import IndexSpec, IndexType

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def require_gpu() -> None:
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.fail("the gpu marker needs a FAISS GPU build and a visible CUDA device")


@pytest.mark.parametrize("index_type", [IndexType.FLAT, IndexType.IVF_FLAT, IndexType.IVF_PQ])
def test_gpu_search_matches_cpu_and_follows_upserts(index_type: IndexType) -> None:
    data = clustered_embeddings(50_000, 64, clusters=100, spread=0.8, seed=2)
    spec = IndexSpec(dimension=64, index_type=index_type, nprobe=32, pq_m=16)
    shard = ShardIndex.build(
        spec, shard_id=0, num_shards=1, item_ids=data.item_ids, vectors=data.vectors,
        index_version="v1", embedding_version="e1",
    )  # fmt: skip
    queries = data.queries(50, seed=3)
    on_cpu = shard.search(queries, 100)
    assert shard.use_gpu(0)
    assert shard.on_gpu
    on_gpu = shard.search(queries, 100)
    overlap = np.mean(
        [
            len(set(c.item_ids.tolist()) & set(g.item_ids.tolist())) / 100
            for c, g in zip(on_cpu, on_gpu, strict=True)
        ]
    )
    assert overlap >= (0.95 if index_type is IndexType.IVF_PQ else 0.99), overlap
    # A write goes to the CPU index and refreshes the GPU clone.
    shard.upsert([10_000_000], queries[:1])
    assert shard.search(queries[:1], 1)[0].item_ids[0] == 10_000_000
    assert shard.delete([10_000_000]) == 1
    assert 10_000_000 not in shard.search(queries[:1], 10)[0].item_ids.tolist()


def test_hnsw_stays_on_the_cpu() -> None:
    data = clustered_embeddings(2_000, 16, seed=1)
    shard = ShardIndex.build(
        IndexSpec(dimension=16, index_type=IndexType.HNSW), shard_id=0, num_shards=1,
        item_ids=data.item_ids, vectors=data.vectors, index_version="v", embedding_version="e",
    )  # fmt: skip
    assert not shard.use_gpu(0)
    assert not shard.on_gpu
