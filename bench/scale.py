"""10,000,000 items x 64 dims in 10 shards, IVF-Flat and IVF-PQ: build time, memory per item,
latency and recall@100. Not part of the default `make bench` (it takes many minutes and about
8 GiB): `make bench SCALE=10m`, or `BENCH_ONLY=scale`; BENCH_SCALE_ITEMS picks another size."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import os
import resource
import sys
import time
from typing import Any

import numpy as np

from bench.common import latency_summary
from recsys.adapters.shards.local import LocalShardClient
from recsys.data.synthetic import clustered_embeddings
from recsys.domain.retrieval import RetrievalQuery, Retriever, RetrieverConfig
from recsys.index.faiss_module import faiss
from recsys.index.host import ShardHost
from recsys.index.quantizer import train_shared_index
from recsys.index.shard_index import ShardIndex
from recsys.index.spec import IndexSpec, IndexType

ITEMS = int(os.environ.get("BENCH_SCALE_ITEMS", "10000000"))
DIMENSION = 64
NUM_SHARDS = 10
K = 1000
QUERIES = int(os.environ.get("BENCH_SCALE_QUERIES", "200"))
NPROBES = (16, 32, 64)
# IVF-PQ: 16 sub-quantizers of 8 bits, 16 bytes per vector (a quarter of 64 dims' 256 bytes).
PQ_M = 16
VERSION = "emb-scale"
# Exact search compares the queries with this many catalogue rows at a time (bounds memory).
EXACT_CHUNK = 1_000_000
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def progress(message: str) -> None:
    sys.stderr.write(f"bench scale: {message}\n")


def resident_bytes() -> int:
    """This process's resident memory, after handing freed heap pages back to the system."""
    gc.collect()
    # Not glibc: the figure then includes freed but unreturned memory.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def exact_top_100(vectors: np.ndarray, queries: np.ndarray) -> list[np.ndarray]:
    """Ground truth by brute force (FAISS flat inner product), a million rows at a time: the
    best 100 of each chunk, then the best 100 of those. Item ids equal row numbers here."""
    best_scores = []
    best_ids = []
    for start in range(0, len(vectors), EXACT_CHUNK):
        scores, rows = _knn(vectors[start : start + EXACT_CHUNK], queries)
        best_scores.append(scores)
        best_ids.append(rows + start)
    scores = np.concatenate(best_scores, axis=1)
    ids = np.concatenate(best_ids, axis=1)
    keep = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    return [row_ids[row_keep] for row_ids, row_keep in zip(ids, keep, strict=True)]


def _knn(chunk: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(chunk.shape[1])
    index.add(np.ascontiguousarray(chunk))
    scores, rows = index.search(queries, 100)
    return scores, rows.astype(np.int64)


def build_shards(
    spec: IndexSpec, vectors: np.ndarray, item_ids: np.ndarray
) -> tuple[list[ShardIndex], float, float]:
    """What `recsys index build` does, kept in memory: one shared quantizer, ten shards.
    Returns the shards, training seconds and adding seconds."""
    started = time.perf_counter()
    trained = train_shared_index(spec, vectors)
    trained_at = time.perf_counter()
    shards = []
    for shard_id in range(NUM_SHARDS):
        # Item ids are 0..n-1, so shard s holds every tenth row from row s.
        shards.append(
            ShardIndex.build(
                spec,
                shard_id=shard_id,
                num_shards=NUM_SHARDS,
                item_ids=item_ids[shard_id::NUM_SHARDS],
                vectors=vectors[shard_id::NUM_SHARDS],
                index_version="idx-scale",
                embedding_version=VERSION,
                trained_index=trained,
            )
        )
    return shards, trained_at - started, time.perf_counter() - trained_at


def index_bytes(shards: list[ShardIndex]) -> int:
    """Bytes the inverted lists need (codes and 8-byte ids) plus the centroids of each shard."""
    total = 0
    for shard in shards:
        ivf = faiss.extract_index_ivf(shard.faiss_index)
        total += ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4
    return total


async def measure(
    shards: list[ShardIndex], queries: np.ndarray, exact: list[np.ndarray], nprobe: int
) -> dict[str, Any]:
    """The Retriever over the shards in this process (the embedded mode without gRPC)."""
    executor = concurrent.futures.ThreadPoolExecutor(2)
    hosts = []
    for shard in shards:
        host = ShardHost(
            shard.spec,
            shard_id=shard.shard_id,
            num_shards=NUM_SHARDS,
            snapshots=None,
            executor=executor,
        )
        host.current = shard
        host.ready = True
        hosts.append(host)
    retriever = Retriever(
        [[LocalShardClient(host)] for host in hosts],
        config=RetrieverConfig(shard_timeout_seconds=30),
    )
    try:
        for query in queries[:10]:  # warm-up
            await retriever.retrieve(RetrievalQuery(query, VERSION, K, nprobe=nprobe))
        samples, found = [], []
        for query in queries:
            began = time.perf_counter()
            result = await retriever.retrieve(RetrievalQuery(query, VERSION, K, nprobe=nprobe))
            samples.append(time.perf_counter() - began)
            found.append(result.item_ids)
    finally:
        executor.shutdown()
    recall = np.mean(
        [
            len(set(f[:100].tolist()) & set(e.tolist())) / 100
            for f, e in zip(found, exact, strict=True)
        ]
    )
    summary = latency_summary(samples)
    return {"p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "recall_at_100": recall}


def run() -> dict[str, Any]:
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # building: every core
    baseline = resident_bytes()
    started = time.perf_counter()
    data = clustered_embeddings(ITEMS, DIMENSION, clusters=1000, spread=1.0, seed=31)
    generate_seconds = time.perf_counter() - started
    progress(f"generated {ITEMS:,} items in {generate_seconds:.0f} s")
    queries = data.queries(QUERIES, seed=32)
    started = time.perf_counter()
    exact = exact_top_100(data.vectors, queries)
    exact_seconds = time.perf_counter() - started
    progress(f"exact top 100 of {QUERIES} queries in {exact_seconds:.0f} s")
    with_data = resident_bytes()
    rows = []
    for label, index_type in (("IVF-Flat", IndexType.IVF_FLAT), ("IVF-PQ m=16", IndexType.IVF_PQ)):
        spec = IndexSpec(dimension=DIMENSION, index_type=index_type, pq_m=PQ_M)
        before = resident_bytes()
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        shards, train_seconds, add_seconds = build_shards(spec, data.vectors, data.item_ids)
        after = resident_bytes()
        progress(f"{label}: trained in {train_seconds:.0f} s, added in {add_seconds:.0f} s")
        nlist = faiss.extract_index_ivf(shards[0].faiss_index).nlist
        # Serving: one OpenMP thread per search, the searches of the shards on two threads.
        faiss.omp_set_num_threads(1)
        for nprobe in NPROBES:
            measured = asyncio.run(measure(shards, queries, exact, nprobe))
            rows.append(
                {
                    "setup": f"{label}, {NUM_SHARDS} shards, nlist {nlist}, nprobe {nprobe}",
                    **measured,
                    "recall_at_100": round(float(measured["recall_at_100"]), 4),
                    "train_s": round(train_seconds, 1),
                    "add_s": round(add_seconds, 1),
                    "index_bytes_per_item": round(index_bytes(shards) / ITEMS, 1),
                    "rss_bytes_per_item": round((after - before) / ITEMS, 1),
                }
            )
        del shards
        gc.collect()
    del data
    # ru_maxrss is in KiB on Linux: the high-water mark of the whole run, transient copies too.
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    flat = [row for row in rows if row["setup"].startswith("IVF-Flat")]
    product = [row for row in rows if row["setup"].startswith("IVF-PQ")]
    conclusion = (
        f"{ITEMS:,} synthetic items (1000 clusters, seeded, generated in chunks in "
        f"{generate_seconds:.0f} s; {(with_data - baseline) / 2**30:.1f} GiB as float32) in "
        f"{NUM_SHARDS} shards sharing one coarse quantizer. Build = training the quantizer on a "
        f"seeded sample (256 points per list) + adding every item; IVF-Flat trains in "
        f"{flat[0]['train_s']} s and adds in {flat[0]['add_s']} s, IVF-PQ in "
        f"{product[0]['train_s']} s + {product[0]['add_s']} s. Memory per item: "
        f"index_bytes_per_item counts the inverted lists (codes + 8-byte ids) and centroids; "
        f"rss_bytes_per_item is the process's resident growth over the build (after "
        f"malloc_trim), so it includes allocator slack. Peak resident memory "
        f"{peak_gib:.1f} GiB. Latency: the Retriever over the {NUM_SHARDS} in-process shards "
        f"(k={K}, {QUERIES} sequential queries, FAISS on 1 OpenMP thread per search, 2 search "
        f"threads); recall@100 against exact search (FAISS flat inner product over all "
        f"{ITEMS:,} items, a million at a time: {exact_seconds:.0f} s)."
    )
    return {
        "title": f"Scale: {ITEMS:,} items x {DIMENSION} dims in {NUM_SHARDS} shards",
        "description": (
            "`make bench SCALE=10m` (not in the default run). Build time, memory per item, "
            f"p50/p99 of Retrieve k={K} in process and recall@100, IVF-Flat and IVF-PQ "
            f"({PQ_M} bytes per vector)."
        ),
        "rows": rows,
        "conclusion": conclusion,
    }
