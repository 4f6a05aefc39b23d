"""Recommend over gRPC on 100k items: the cache-hit path and the full path (features,
retrieval over 10 in-process shards, ranking, filters), a raw redis-py GET of a cached answer
beside them (the limit of the cache-hit path), and the share of each pipeline stage from the
server's stage histograms. Stores: Redis (features, caches, limiter) and SQLite (metadata)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from bench import processes
from bench.common import ROOT, latency_summary
from recsys.adapters.redis.features import RedisFeatureStore
from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.adapters.sql.metadata import SqlMetadataRepository
from recsys.data.synthetic import clustered_embeddings
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys.metadata.database import create_engine
from recsys.metadata.migrate import upgrade
from recsys.ports.features import ItemFeatures, UserEmbedding
from recsys.ports.metadata import ItemMetadata
from recsys.settings import DatabaseSettings
from recsys_client import AsyncRecsysClient, ClientOptions

ITEMS = int(os.environ.get("BENCH_RECOMMEND_ITEMS", "100000"))
USERS = int(os.environ.get("BENCH_RECOMMEND_USERS", "300"))
DIMENSION = 64
CATEGORIES = 20
VERSION = "emb-bench"


async def load_stores(namespace: str, database: DatabaseSettings, folder: Path) -> None:
    data = clustered_embeddings(ITEMS, DIMENSION, clusters=500, spread=0.8, seed=5)
    build_shard_snapshots(
        ItemEmbeddings(data.item_ids, data.vectors, VERSION),
        IndexSpec(dimension=DIMENSION, index_type=IndexType.IVF_FLAT, nprobe=16),
        num_shards=10, index_version="idx-bench",
        snapshots=SnapshotManager(LocalSnapshotStore(folder / "snapshots")),
    )  # fmt: skip
    rng = np.random.default_rng(6)
    popularity = rng.power(0.3, ITEMS).astype(np.float32)
    store = RedisFeatureStore(
        aioredis.Redis.from_url("redis://127.0.0.1:6379/0"), namespace=namespace
    )
    for start in range(0, ITEMS, 5000):
        await store.put_item_features(
            {
                item: ItemFeatures(
                    f"c{item % CATEGORIES}", float(popularity[item]), 0.5, data.vectors[item]
                )
                for item in range(start, min(ITEMS, start + 5000))
            }
        )
    now = dt.datetime.now(dt.UTC)
    queries = data.queries(USERS, seed=7)
    for user in range(USERS):
        await store.put_user_embedding(f"user{user}", UserEmbedding(queries[user], VERSION, now))
    await store.put_default_user_embedding(UserEmbedding(queries.mean(axis=0), VERSION, now))
    await store.close()
    upgrade(database)
    metadata = SqlMetadataRepository(create_engine(database))
    await metadata.upsert_items(
        [
            ItemMetadata(item, f"c{item % CATEGORIES}", popularity=float(popularity[item]))
            for item in range(ITEMS)
        ]
    )
    await metadata.close()


async def measure(address: str, users: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    options = ClientOptions(target=address, timeout_seconds=30, retry=None)
    async with AsyncRecsysClient(options) as client:
        await client.recommend("warmup", limit=20, surface="search")
        full, hits = [], []
        for user in users:  # first call per user: a cache miss, the full pipeline
            began = time.perf_counter()
            response = await client.recommend(user, limit=20)
            full.append(time.perf_counter() - began)
            assert not response.degradation.served_from_cache
            assert not response.degradation.default_features  # measured on real features
            assert len(response.items) == 20
        for user in users:  # second call: the response cache
            began = time.perf_counter()
            response = await client.recommend(user, limit=20)
            hits.append(time.perf_counter() - began)
            assert response.degradation.served_from_cache
    return latency_summary(full), latency_summary(hits)


async def raw_redis_get(namespace: str, users: list[str]) -> dict[str, Any]:
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    samples = []
    for user in users:
        began = time.perf_counter()
        await client.get(f"{namespace}:recommendations:{user}:homepage")
        samples.append(time.perf_counter() - began)
    await client.aclose()
    return latency_summary(samples)


async def measure_in_process(
    environment: dict[str, str], users: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same deployment built in this process; the pipeline called directly (the embedded
    mode's cost without any gRPC), on a fresh surface so the first pass misses the cache."""
    from recsys import services
    from recsys.domain.requests import RecommendQuery, RequestContext
    from recsys.settings import load_settings

    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        settings = load_settings(server={"port": 0}, metrics={"enabled": False})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    application = await services.build_application(settings, ["embedded"])
    await application.start()
    assert application.components is not None
    pipeline = application.components.recommend_pipeline
    assert pipeline is not None
    try:
        full, hits = [], []
        for samples in (full, hits):
            for user in users:
                query = RecommendQuery(user, "search", 20, RequestContext())
                began = time.perf_counter()
                await pipeline.recommend(query)
                samples.append(time.perf_counter() - began)
    finally:
        await application.shutdown()
    return latency_summary(full), latency_summary(hits)


def stage_shares(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("recommendations_stage_seconds_sum"):
            stage = line.split('stage="')[1].split('"')[0]
            sums[stage] = float(line.rsplit(" ", 1)[1])
    total = sum(sums.values()) or 1.0
    return {
        stage: round(value / total, 3)
        for stage, value in sorted(sums.items(), key=lambda kv: -kv[1])
    }


def run() -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="recsys-bench-recommend-"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    database = DatabaseSettings(url=f"sqlite+aiosqlite:///{folder / 'meta.db'}")
    asyncio.run(load_stores(namespace, database, folder))
    environment = {
        "RECSYS_INDEX__SNAPSHOT_DIR": str(folder / "snapshots"),
        "RECSYS_INDEX__SPEC__DIMENSION": str(DIMENSION),
        "RECSYS_INDEX__SNAPSHOT_POLL_SECONDS": "0",
        "RECSYS_RANK__MODEL_REPOSITORY": str(ROOT / "triton_models"),
        "RECSYS_RANK__RELOAD_POLL_SECONDS": "0",
        "RECSYS_FEATURES__STORE": "redis",
        "RECSYS_RECOMMEND__CACHE": "redis",
        "RECSYS_RATE_LIMIT__LIMITER": "redis",
        "RECSYS_REDIS__NAMESPACE": namespace,
        "RECSYS_DATABASE__URL": database.url,
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
        # The benchmark measures the path, not the seed's 10 ms budgets on a loaded 2-core box.
        "RECSYS_RECOMMEND__FEATURE_TIMEOUT_MS": "1000",
        "RECSYS_RECOMMEND__CACHE_TIMEOUT_MS": "1000",
        "RECSYS_RANK__FEATURE_TIMEOUT_MS": "1000",
        "RECSYS_RECOMMEND__RETRIEVE_TIMEOUT_MS": "1000",
        "RECSYS_RETRIEVE__SHARD_TIMEOUT_MS": "1000",
    }
    server = processes.wait_ready(processes.start(["embedded"], environment))
    users = [f"user{user}" for user in range(USERS)]
    try:
        full, hits = asyncio.run(measure(server.address, users))
        shares = stage_shares(server.metrics_url)
    finally:
        server.stop()
    raw = asyncio.run(raw_redis_get(namespace, users))
    in_process_full, in_process_hits = asyncio.run(measure_in_process(environment, users))
    asyncio.run(_cleanup(namespace))
    rows = [
        {"setup": "raw redis-py GET of a cached answer (the cache-hit limit)", **raw},
        {"setup": "Recommend over gRPC, cache hit", **hits},
        {"setup": f"Recommend over gRPC, full path ({ITEMS:,} items, 10 shards)", **full},
        {"setup": "RecommendPipeline in-process (no gRPC), cache hit", **in_process_hits},
        {"setup": "RecommendPipeline in-process (no gRPC), full path", **in_process_full},
    ]
    top = ", ".join(f"{stage} {share:.0%}" for stage, share in list(shares.items())[:6])
    return {
        "title": f"Recommend limit=20 over {ITEMS:,} items (embedded retrieval and ranking)",
        "description": (
            f"{USERS} users, each asked twice: first the full pipeline (a cache miss), then the "
            "response cache. Server: `recsys serve embedded` in its own process with Redis "
            "features, caches and limiter and SQLite metadata; client in the benchmark process."
        ),
        "rows": rows,
        "conclusion": (
            f"Cache hit p50 {hits['p50_ms']} ms vs a raw Redis GET {raw['p50_ms']} ms (seed "
            f"budget ~5 ms); full path p50 {full['p50_ms']} ms, p99 {full['p99_ms']} ms (seed: "
            f"~50 ms, P99 alert at 80 ms). Share of pipeline time by stage: {top}."
        ),
        "stage_shares": shares,
    }


async def _cleanup(namespace: str) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=10_000)]
    for start in range(0, len(keys), 10_000):
        await client.delete(*keys[start : start + 10_000])
    await client.aclose()
