"""Builds N shard snapshots from one embeddings file (`recsys index build`).

IVF builds train one coarse quantizer on a seeded sample of the whole catalogue and give it to
every shard (see `recsys.index.quantizer`), so the shards search like one index. Each shard's
snapshot carries golden queries for the quality canary (see `recsys.index.canary`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np

from recsys.index.canary import GOLDEN_FILE, GOLDEN_K, GOLDEN_QUERIES, record_golden
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.quantizer import QUANTIZER_SEED, train_shared_index
from recsys.index.shard_index import ShardIndex
from recsys.index.snapshots import SnapshotManager, SnapshotManifest
from recsys.index.spec import IndexSpec

ProgressCallback = Callable[[int, SnapshotManifest], None]


def default_index_version(now: dt.datetime | None = None) -> str:
    return "idx-" + (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")


def build_shard_snapshots(
    embeddings: ItemEmbeddings,
    spec: IndexSpec,
    *,
    num_shards: int,
    index_version: str,
    snapshots: SnapshotManager,
    make_current: bool = True,
    on_shard_done: ProgressCallback | None = None,
    seed: int = QUANTIZER_SEED,
    golden_queries: int = GOLDEN_QUERIES,
    golden_k: int = GOLDEN_K,
) -> list[SnapshotManifest]:
    """One snapshot per shard, shard s holding the items with `item_id % num_shards == s`,
    with `golden_queries` of its item vectors and their top `golden_k` hits recorded beside it
    (0: none).

    Every shard is written before any CURRENT pointer flips, so a failed build leaves the
    serving versions untouched."""
    if embeddings.dimension != spec.dimension:
        raise ValueError(
            f"embeddings have dimension {embeddings.dimension}, the spec says {spec.dimension}"
        )
    if len(np.unique(embeddings.item_ids)) != len(embeddings.item_ids):
        raise ValueError("item ids in the embeddings file must be unique")
    built_at = dt.datetime.now(dt.UTC)
    trained = None
    if spec.is_ivf and len(embeddings.item_ids):
        # nlist for the catalogue, not per shard: the shards split one index's lists.
        trained = train_shared_index(spec, embeddings.vectors, seed=seed)
    routes = embeddings.item_ids % num_shards
    manifests = []
    for shard_id in range(num_shards):
        mine = routes == shard_id
        vectors = embeddings.vectors[mine]
        shard = ShardIndex.build(
            spec,
            shard_id=shard_id,
            num_shards=num_shards,
            item_ids=embeddings.item_ids[mine],
            vectors=vectors,
            index_version=index_version,
            embedding_version=embeddings.embedding_version,
            built_at=built_at,
            trained_index=trained,
        )
        extra_files = {}
        if golden_queries and shard.item_count:
            golden = record_golden(shard, vectors, count=golden_queries, k=golden_k, seed=seed)
            extra_files[GOLDEN_FILE] = golden.to_bytes()
        manifest = snapshots.publish(shard, make_current=False, extra_files=extra_files)
        manifests.append(manifest)
        if on_shard_done is not None:
            on_shard_done(shard_id, manifest)
    if make_current:
        for shard_id in range(num_shards):
            snapshots.store.set_current(shard_id, index_version)
            snapshots.prune(shard_id)
    return manifests
