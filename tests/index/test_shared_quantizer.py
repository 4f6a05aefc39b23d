"""One coarse quantizer per build: every shard probes the same lists as one index over the
whole catalogue, so the merged answer of the shards is the single index's answer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.data.synthetic import ClusteredEmbeddings, clustered_embeddings
from recsys.domain.ordering import top_k_order
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.faiss_module import faiss
from recsys.index.host import ShardHost
from recsys.index.quantizer import quantizer_id, train_shared_index
from recsys.index.shard_index import ShardIndex
from recsys.index.snapshots import (
    MANIFEST_FILE,
    Expectations,
    SnapshotInvalid,
    SnapshotManager,
    SnapshotManifest,
)
from recsys.index.spec import IndexSpec, IndexType
from recsys.ports.shards import SearchHits

DIMENSION = 16
NUM_SHARDS = 4
ITEMS = 4_000
NLIST = 32
K = 50


@pytest.fixture(scope="module")
def data() -> ClusteredEmbeddings:
    return clustered_embeddings(ITEMS, DIMENSION, clusters=24, spread=1.0, seed=3)


def spec_for(index_type: IndexType = IndexType.IVF_FLAT) -> IndexSpec:
    return IndexSpec(dimension=DIMENSION, index_type=index_type, nlist=NLIST, pq_m=4, pq_nbits=6)


def build(
    folder: Path,
    data: ClusteredEmbeddings,
    spec: IndexSpec,
    version: str = "v1",
    *,
    seed: int = 1234,
) -> tuple[SnapshotManager, list[SnapshotManifest]]:
    manager = SnapshotManager(LocalSnapshotStore(folder))
    manifests = build_shard_snapshots(
        ItemEmbeddings(data.item_ids, data.vectors, "emb-1"),
        spec,
        num_shards=NUM_SHARDS,
        index_version=version,
        snapshots=manager,
        seed=seed,
    )
    return manager, manifests


def load_shards(manager: SnapshotManager, version: str | None = None) -> list[ShardIndex]:
    return [
        manager.load(Expectations(shard_id=shard, num_shards=NUM_SHARDS), version)
        for shard in range(NUM_SHARDS)
    ]


def merged(shards: list[ShardIndex], query: np.ndarray, nprobe: int) -> SearchHits:
    """The shards' answers merged the way the Retriever merges them: top k by score, then id."""
    answers = [shard.search(query[None, :], K, nprobe=nprobe)[0] for shard in shards]
    ids = np.concatenate([answer.item_ids for answer in answers])
    scores = np.concatenate([answer.scores for answer in answers])
    order = top_k_order(ids, scores, K)
    return SearchHits(ids[order], scores[order])


def centroids(shard: ShardIndex) -> np.ndarray:
    ivf = faiss.extract_index_ivf(shard.faiss_index)
    result: np.ndarray = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    return result


@pytest.mark.parametrize("index_type", [IndexType.IVF_FLAT, IndexType.IVF_PQ])
def test_every_shard_probes_the_same_centroids_and_says_so(
    tmp_path: Path, data: ClusteredEmbeddings, index_type: IndexType
) -> None:
    manager, manifests = build(tmp_path, data, spec_for(index_type))
    shards = load_shards(manager)
    for shard in shards[1:]:
        np.testing.assert_array_equal(centroids(shard), centroids(shards[0]))
        assert faiss.extract_index_ivf(shard.faiss_index).nlist == NLIST
    identifiers = {manifest.quantizer_id for manifest in manifests}
    assert len(identifiers) == 1
    assert identifiers != {None}
    assert {shard.quantizer_id for shard in shards} == identifiers
    if index_type is IndexType.IVF_PQ:
        codebooks = [
            faiss.vector_to_array(
                faiss.downcast_index(faiss.extract_index_ivf(shard.faiss_index)).pq.centroids
            )
            for shard in shards
        ]
        for codebook in codebooks[1:]:
            np.testing.assert_array_equal(codebook, codebooks[0])


@pytest.mark.parametrize("nprobe", [1, 4, NLIST])
def test_merged_shards_answer_like_one_index_at_the_same_nprobe(
    tmp_path: Path, data: ClusteredEmbeddings, nprobe: int
) -> None:
    spec = spec_for()
    manager, manifests = build(tmp_path, data, spec)
    shards = load_shards(manager)
    # One shard over the whole catalogue trains the same quantizer from the same seed.
    single = ShardIndex.build(
        spec,
        shard_id=0,
        num_shards=1,
        item_ids=data.item_ids,
        vectors=data.vectors,
        index_version="single",
        embedding_version="emb-1",
    )
    assert single.quantizer_id == manifests[0].quantizer_id
    for query in data.queries(20, seed=9):
        expected = single.search(query[None, :], K, nprobe=nprobe)[0]
        found = merged(shards, query, nprobe)
        np.testing.assert_array_equal(found.item_ids, expected.item_ids)
        np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-5)


def test_probing_every_list_is_exact_search(tmp_path: Path, data: ClusteredEmbeddings) -> None:
    manager, _ = build(tmp_path, data, spec_for())
    shards = load_shards(manager)
    vectors = data.vectors / np.linalg.norm(data.vectors, axis=1, keepdims=True)
    for query in data.queries(10, seed=11):
        unit = query / np.linalg.norm(query)
        exact = top_k_order(data.item_ids, (vectors @ unit).astype(np.float32), K)
        found = merged(shards, query, NLIST)
        assert set(found.item_ids.tolist()) == set(data.item_ids[exact].tolist())


def test_same_seed_same_snapshots_other_seed_other_quantizer(
    tmp_path: Path, data: ClusteredEmbeddings
) -> None:
    _, first = build(tmp_path / "a", data, spec_for())
    _, again = build(tmp_path / "b", data, spec_for())
    _, other = build(tmp_path / "c", data, spec_for(), seed=99)
    assert [m.files for m in first] == [m.files for m in again]
    assert [m.quantizer_id for m in first] == [m.quantizer_id for m in again]
    assert other[0].quantizer_id != first[0].quantizer_id


def test_a_manifest_naming_another_quantizer_is_refused(
    tmp_path: Path, data: ClusteredEmbeddings
) -> None:
    manager, _ = build(tmp_path, data, spec_for())
    store = manager.store
    assert isinstance(store, LocalSnapshotStore)
    path = store.root / "shard-000" / "versions" / "v1" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["quantizer_id"] = "q-0000000000000000"
    path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotInvalid, match="quantizer"):
        manager.verify("v1", Expectations(shard_id=0, num_shards=NUM_SHARDS))


async def test_shards_of_different_builds_are_served_with_a_warning(
    tmp_path: Path, data: ClusteredEmbeddings, caplog: pytest.LogCaptureFixture
) -> None:
    manager, first = build(tmp_path, data, spec_for(), "v1")
    _, second = build(tmp_path, data, spec_for(), "v2", seed=77)
    host = ShardHost(spec_for(), shard_id=0, num_shards=NUM_SHARDS, snapshots=manager)
    with caplog.at_level(logging.WARNING, logger="recsys.index.host"):
        await host.load_snapshot("v2")  # every CURRENT names v2: one build, no warning
    assert "coarse quantizers differ" not in caplog.text
    for shard in range(1, NUM_SHARDS):
        manager.store.set_current(shard, "v1")
    with caplog.at_level(logging.WARNING, logger="recsys.index.host"):
        await host.load_snapshot("v2")
    assert "coarse quantizers differ" in caplog.text
    assert host.current.quantizer_id == second[0].quantizer_id != first[0].quantizer_id


def test_upserts_and_deletes_keep_the_shared_quantizer(
    tmp_path: Path, data: ClusteredEmbeddings
) -> None:
    manager, manifests = build(tmp_path, data, spec_for())
    shard = load_shards(manager)[1]
    new_id = ITEMS + 1  # ITEMS % 4 == 0, so this id routes to shard 1
    vector = data.queries(1, seed=5)
    assert shard.upsert([new_id], vector) == 1
    hits = shard.search(vector, 1, nprobe=NLIST)[0]
    assert hits.item_ids.tolist() == [new_id]
    assert shard.delete([new_id]) == 1
    assert new_id not in shard.search(vector, K, nprobe=NLIST)[0].item_ids.tolist()
    assert shard.quantizer_id == manifests[1].quantizer_id


def test_flat_and_hnsw_have_no_quantizer(tmp_path: Path, data: ClusteredEmbeddings) -> None:
    for index_type in (IndexType.FLAT, IndexType.HNSW):
        _, manifests = build(tmp_path / index_type.value, data, spec_for(index_type))
        assert {manifest.quantizer_id for manifest in manifests} == {None}
    with pytest.raises(ValueError, match="no coarse quantizer"):
        train_shared_index(spec_for(IndexType.FLAT), data.vectors)
    assert quantizer_id(faiss.IndexFlatIP(DIMENSION)) is None
