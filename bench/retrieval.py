"""Retrieve k=1000 over 1M items x 64 dims: ten shard processes on loopback behind a Retrieve
process, the embedded mode (one process, in-process shards), and the limit: one in-process
FAISS index of the same items and parameters, all in one run."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench import processes
from bench.common import latency_summary
from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.data.synthetic import clustered_embeddings
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.shard_index import ShardIndex
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys_client import AsyncRecsysClient, ClientOptions

ITEMS = int(os.environ.get("BENCH_RETRIEVAL_ITEMS", "1000000"))
DIMENSION = 64
NUM_SHARDS = 10
K = 1000
NPROBE = 16
LATENCY_QUERIES = int(os.environ.get("BENCH_RETRIEVAL_QUERIES", "300"))
THROUGHPUT_REQUESTS = int(os.environ.get("BENCH_RETRIEVAL_REQUESTS", "400"))
CONCURRENCY = 16
VERSION = "emb-bench"


def recall_at_100(found: list[np.ndarray], exact: list[np.ndarray]) -> float:
    return float(
        np.mean(
            [
                len(set(f[:100].tolist()) & set(e.tolist())) / 100
                for f, e in zip(found, exact, strict=True)
            ]
        )
    )


def single_index_rows(
    data: Any, queries: np.ndarray, exact: list[np.ndarray]
) -> list[dict[str, Any]]:
    """The limit: one in-process IVF-Flat over all items, nq=1 searches like a request."""
    spec = IndexSpec(dimension=DIMENSION, index_type=IndexType.IVF_FLAT, nprobe=NPROBE)
    started = time.perf_counter()
    single = ShardIndex.build(
        spec, shard_id=0, num_shards=1, item_ids=data.item_ids, vectors=data.vectors,
        index_version="single", embedding_version=VERSION,
    )  # fmt: skip
    build_seconds = time.perf_counter() - started
    rows = []
    for nprobe in (NPROBE, NPROBE * 4, NPROBE * 8, NPROBE * 16):
        samples, found = [], []
        for query in queries:
            began = time.perf_counter()
            hits = single.search(query[None, :], K, nprobe=nprobe)[0]
            samples.append(time.perf_counter() - began)
            found.append(hits.item_ids)
        began = time.perf_counter()
        for query in queries[: THROUGHPUT_REQUESTS // 4]:
            single.search(query[None, :], K, nprobe=nprobe)
        throughput = (THROUGHPUT_REQUESTS // 4) / (time.perf_counter() - began)
        rows.append(
            {
                "setup": (
                    f"single in-process FAISS (nlist {spec.lists_for(ITEMS)}, nprobe {nprobe})"
                ),
                **latency_summary(samples),
                "throughput_rps": round(throughput),
                "recall_at_100": round(recall_at_100(found, exact), 4),
                "build_s": round(build_seconds, 1),
            }
        )
    return rows


async def measure_service(
    address: str,
    queries: np.ndarray,
    exact: list[np.ndarray],
    *,
    nprobe: int = NPROBE,
    throughput: bool = True,
) -> dict[str, Any]:
    options = ClientOptions(target=address, timeout_seconds=30, retry=None)
    async with AsyncRecsysClient(options) as client:
        request = client.retrieve_stub.Retrieve

        from recsys.v1 import common_pb2
        from recsys.v1 import retrieve_service_pb2 as pb

        def build(query: np.ndarray) -> pb.RetrieveRequest:
            return pb.RetrieveRequest(
                query_vector=common_pb2.EmbeddingVector(
                    values=query.tolist(), embedding_version=VERSION
                ),
                k=K,
                search_parameters=pb.SearchParameters(nprobe=nprobe),
            )

        for query in queries[:20]:  # warm-up
            await request(build(query), timeout=30)
        samples, found = [], []
        for query in queries:
            began = time.perf_counter()
            response = await request(build(query), timeout=30)
            samples.append(time.perf_counter() - began)
            assert not response.partial
            assert len(response.candidates) == K
            found.append(np.array([c.item_id for c in response.candidates]))
        result: dict[str, Any] = {**latency_summary(samples)}
        if throughput:

            async def caller(offset: int) -> None:
                for index in range(offset, THROUGHPUT_REQUESTS, CONCURRENCY):
                    await request(build(queries[index % len(queries)]), timeout=30)

            began = time.perf_counter()
            await asyncio.gather(*(caller(offset) for offset in range(CONCURRENCY)))
            result["throughput_rps"] = round(THROUGHPUT_REQUESTS / (time.perf_counter() - began), 1)
        else:
            result["throughput_rps"] = "-"
    result["recall_at_100"] = round(recall_at_100(found, exact), 4)
    return result


async def measure_in_process(
    folder: Path, queries: np.ndarray, exact: list[np.ndarray]
) -> dict[str, Any]:
    """The Retriever itself over ten in-process shards: no gRPC anywhere."""
    import concurrent.futures

    from recsys.adapters.shards.local import LocalShardClient
    from recsys.domain.retrieval import RetrievalQuery, Retriever
    from recsys.index.host import ShardHost

    executor = concurrent.futures.ThreadPoolExecutor(4)
    manager = SnapshotManager(LocalSnapshotStore(folder))
    spec = IndexSpec(dimension=DIMENSION, index_type=IndexType.IVF_FLAT, nprobe=NPROBE)
    hosts = [
        ShardHost(spec, shard_id=s, num_shards=NUM_SHARDS, snapshots=manager, executor=executor)
        for s in range(NUM_SHARDS)
    ]
    for host in hosts:
        await host.start()
    retriever = Retriever([[LocalShardClient(host)] for host in hosts])
    samples, found = [], []
    for query in queries:
        began = time.perf_counter()
        result = await retriever.retrieve(RetrievalQuery(query, VERSION, K))
        samples.append(time.perf_counter() - began)
        found.append(result.item_ids)
    direct = []
    depth = retriever._first_depth(K, K)
    for query in queries:
        began = time.perf_counter()
        for host in hosts:
            host.current.search(query[None, :], depth)
        direct.append(time.perf_counter() - began)
    executor.shutdown()
    return {
        **latency_summary(samples),
        "throughput_rps": "-",
        "recall_at_100": round(recall_at_100(found, exact), 4),
        "faiss_only_p50_ms": latency_summary(direct)["p50_ms"],
        "first_round_depth": depth,
    }


def shard_seconds_totals(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of the Retrieve process's shard-call latency histogram."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("recsys_retrieve_shard_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("recsys_retrieve_shard_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def run() -> dict[str, Any]:
    # Wide clusters (spread 1.0): neighbours straddle IVF lists, so nprobe trades recall for time.
    data = clustered_embeddings(ITEMS, DIMENSION, clusters=1000, spread=1.0, seed=21)
    queries = data.queries(LATENCY_QUERIES, seed=22)
    exact = [data.item_ids[np.argpartition(-(data.vectors @ q), 100)[:100]] for q in queries]
    rows = single_index_rows(data, queries, exact)

    folder = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    spec = IndexSpec(dimension=DIMENSION, index_type=IndexType.IVF_FLAT, nprobe=NPROBE)
    started = time.perf_counter()
    build_shard_snapshots(
        ItemEmbeddings(data.item_ids, data.vectors, VERSION), spec, num_shards=NUM_SHARDS,
        index_version="idx-bench", snapshots=SnapshotManager(LocalSnapshotStore(folder)),
    )  # fmt: skip
    build_seconds = time.perf_counter() - started
    del data
    environment = {
        "RECSYS_INDEX__SNAPSHOT_DIR": str(folder),
        "RECSYS_INDEX__NUM_SHARDS": str(NUM_SHARDS),
        "RECSYS_INDEX__SPEC__DIMENSION": str(DIMENSION),
        "RECSYS_INDEX__SNAPSHOT_POLL_SECONDS": "0",
        "RECSYS_INDEX__FAISS_THREADS": "1",
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
        "RECSYS_RETRIEVE__SHARD_TIMEOUT_MS": "5000",
        "RECSYS_SERVER__DEFAULT_DEADLINE_MS": "30000",
    }
    shards = [
        processes.start(
            ["shard", "--shard-id", str(s), "--num-shards", str(NUM_SHARDS)], environment
        )
        for s in range(NUM_SHARDS)
    ]
    servers = list(shards)
    try:
        for shard in shards:
            processes.wait_ready(shard)
        targets = json.dumps([[shard.address] for shard in shards])
        retrieve = processes.wait_ready(
            processes.start(
                ["retrieve"], {**environment, "RECSYS_RETRIEVE__SHARD_TARGETS": targets}
            )
        )
        servers.append(retrieve)
        before = shard_seconds_totals(retrieve.metrics_url)
        asyncio.run(measure_service(retrieve.address, queries, exact, throughput=False))
        after = shard_seconds_totals(retrieve.metrics_url)
        mean_shard = (after[0] - before[0]) / max(1.0, after[1] - before[1])
        sharded = asyncio.run(measure_service(retrieve.address, queries, exact))
        rows.append(
            {"setup": f"Retrieve + {NUM_SHARDS} shard processes (gRPC, nprobe {NPROBE})", **sharded,
             "build_s": round(build_seconds, 1)}
        )  # fmt: skip
        for nprobe in (NPROBE * 2, NPROBE * 4):
            rows.append(
                {"setup": f"Retrieve + {NUM_SHARDS} shard processes (gRPC, nprobe {nprobe})",
                 **asyncio.run(measure_service(retrieve.address, queries, exact, nprobe=nprobe,
                                               throughput=False)),
                 "build_s": round(build_seconds, 1)}
            )  # fmt: skip
        for server in servers:
            server.stop()
        servers = []
        embedded = processes.wait_ready(processes.start(["retrieve"], environment))
        servers.append(embedded)
        rows.append(
            {"setup": f"Retrieve embedded ({NUM_SHARDS} in-process shards, nprobe {NPROBE})",
             **asyncio.run(measure_service(embedded.address, queries, exact)),
             "build_s": round(build_seconds, 1)}
        )  # fmt: skip
        embedded.stop()
        servers = []
        in_process = asyncio.run(measure_in_process(folder, queries, exact))
        faiss_only = in_process.pop("faiss_only_p50_ms")
        depth = in_process.pop("first_round_depth")
        rows.append(
            {"setup": f"Retriever in-process, no gRPC ({NUM_SHARDS} shards, nprobe {NPROBE})",
             **in_process, "build_s": round(build_seconds, 1)}
        )  # fmt: skip
    finally:
        for server in servers:
            server.stop()
    limit = rows[0]["p50_ms"]
    for row in rows:
        row["p50_vs_single"] = f"{row['p50_ms'] / limit:.2f}x"
    singles = rows[:4]
    sharded_rows = [r for r in rows if "shard processes" in r["setup"]]
    default = sharded_rows[0]
    # Equal recall: the cheapest setting of each that reaches the recall both can reach.
    target = min(
        max(r["recall_at_100"] for r in singles), max(r["recall_at_100"] for r in sharded_rows)
    )
    single_at = min((r for r in singles if r["recall_at_100"] >= target), key=lambda r: r["p50_ms"])
    sharded_at = min(
        (r for r in sharded_rows if r["recall_at_100"] >= target), key=lambda r: r["p50_ms"]
    )

    def setting(row: dict[str, Any]) -> str:
        return str(row["setup"].split("(")[1].rstrip(")"))

    conclusion = (
        f"At equal recall@100 (>= {target}): sharded {setting(sharded_at)} has p50 "
        f"{sharded_at['p50_ms']} ms, the single index {setting(single_at)} has p50 "
        f"{single_at['p50_ms']} ms: {sharded_at['p50_ms'] / single_at['p50_ms']:.1f}x (aim: 3x, "
        f"not met on this machine). Per-shard IVF lists (sqrt(100k) = 316 per shard) align "
        f"worse with the data's 1000 clusters than one index's 1000 lists, so shards need a "
        f"larger nprobe for the same recall. Where the time goes at nprobe {NPROBE}: the ten "
        f"shard searches at the first-round depth ({depth} of k={K}) take {faiss_only} ms of "
        f"FAISS at p50; the Retriever in-process (thread hops, merge) takes {rows[-1]['p50_ms']} "
        f"ms in all; one gRPC call and encoding {K} candidates bring the embedded service to "
        f"{rows[-2]['p50_ms']} ms; ten loopback gRPC calls, each served by a Python process, "
        f"bring the sharded service to {default['p50_ms']} ms (mean shard call as Retrieve sees "
        f"it: {mean_shard * 1000:.2f} ms), with 11 server processes and the client sharing 2 "
        f"cores."
    )
    return {
        "title": f"Retrieve k={K} over {ITEMS:,} items x {DIMENSION} dims (IVF-Flat)",
        "description": (
            f"{LATENCY_QUERIES} sequential queries for latency and recall@100 against exact "
            f"search, then {THROUGHPUT_REQUESTS} requests from {CONCURRENCY} concurrent callers "
            "for throughput "
            "(saturation on this machine). Single-index rows call FAISS directly in the benchmark "
            "process (nq=1, like one request); service rows go through the Python client over "
            "loopback gRPC."
        ),
        "rows": rows,
        "conclusion": conclusion,
    }
