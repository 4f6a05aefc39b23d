"""Retrieve over ten real shard processes on loopback: recall, routing, partial results when a
shard process dies, strict mode, replica failover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys import services
from recsys.data.synthetic import ClusteredEmbeddings, clustered_embeddings
from recsys.grpc_server.app import GrpcApplication
from recsys.index.embeddings_file import ItemEmbeddings, save_embeddings
from recsys.v1 import index_shard_service_pb2, index_shard_service_pb2_grpc
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError
from tests.conftest import drain_stderr, make_settings, wait_for_address

pytestmark = pytest.mark.integration

NUM_SHARDS = 10
DIMENSION = 32
ITEMS = 100_000
RECSYS = str(Path(sys.executable).with_name("recsys"))


@dataclass
class ShardProcess:
    shard_id: int
    process: subprocess.Popen[str]
    address: str

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class Deployment:
    data: ClusteredEmbeddings
    snapshots: Path
    shards: list[ShardProcess]
    spawn: object


def _start_shard(snapshots: Path, shard_id: int) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "RECSYS_INDEX__SNAPSHOT_DIR": str(snapshots),
        "RECSYS_INDEX__SPEC__DIMENSION": str(DIMENSION),
        "RECSYS_INDEX__SNAPSHOT_POLL_SECONDS": "0",
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
        "RECSYS_INDEX__FAISS_THREADS": "1",
    }
    return subprocess.Popen(
        [RECSYS, "serve", "shard", "--shard-id", str(shard_id), "--num-shards", str(NUM_SHARDS),
         "--port", "0", "--metrics-port", "0"],
        stderr=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("deployment")
    # Wide clusters: an item's neighbours straddle IVF lists, so recall is a real measurement.
    data = clustered_embeddings(ITEMS, DIMENSION, clusters=200, spread=0.8, seed=11)
    embeddings = folder / "items.npz"
    save_embeddings(embeddings, ItemEmbeddings(data.item_ids, data.vectors, "emb-e2e"))
    snapshots = folder / "snapshots"
    subprocess.run(
        [RECSYS, "index", "build", "--embeddings", str(embeddings), "--snapshots", str(snapshots),
         "--num-shards", str(NUM_SHARDS), "--index-type", "ivf_flat", "--nprobe", "16",
         "--index-version", "idx-e2e"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    started: list[ShardProcess] = []
    readers = []

    def spawn(shard_id: int) -> ShardProcess:
        process = _start_shard(snapshots, shard_id)
        shard = ShardProcess(shard_id, process, wait_for_address(process))
        readers.append(drain_stderr(process))
        started.append(shard)
        return shard

    processes = [_start_shard(snapshots, shard_id) for shard_id in range(NUM_SHARDS)]
    shards = []
    for shard_id, process in enumerate(processes):
        shard = ShardProcess(shard_id, process, wait_for_address(process))
        readers.append(drain_stderr(process))
        started.append(shard)
        shards.append(shard)
    try:
        yield Deployment(data, snapshots, shards, spawn)
    finally:
        for shard in started:
            if shard.process.poll() is None:
                shard.process.kill()
                shard.process.wait(timeout=10)


async def retrieve_app(folder: Path, targets: list[list[str]]) -> GrpcApplication:
    settings = make_settings(
        folder,
        index={"num_shards": NUM_SHARDS, "spec": {"dimension": DIMENSION}},
        retrieve={"shard_targets": targets, "shard_timeout_ms": 2000},
        logging={"access_log": False},
    )
    app = await services.build_application(settings, ["retrieve"])
    await app.start()
    return app


def client_for(app: GrpcApplication) -> AsyncRecsysClient:
    return AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=10, retry=None))


def exact_top(data: ClusteredEmbeddings, query: np.ndarray, k: int) -> set[int]:
    return set(data.item_ids[np.argsort(-(data.vectors @ query))[:k]].tolist())


async def test_recall_at_100_against_exact_search(deployment: Deployment, tmp_path: Path) -> None:
    app = await retrieve_app(tmp_path, [[shard.address] for shard in deployment.shards])
    try:
        queries = deployment.data.queries(50, seed=7)
        recalls = []
        async with client_for(app) as client:
            for query in queries:
                response = await client.retrieve(
                    query_vector=query.tolist(), embedding_version="emb-e2e", k=100
                )
                got = [candidate.item_id for candidate in response.candidates]
                assert len(got) == 100
                recalls.append(len(set(got) & exact_top(deployment.data, query, 100)) / 100)
                # Routing invariant: every candidate came from its own shard.
                assert all(c.shard_id == c.item_id % NUM_SHARDS for c in response.candidates)
                assert response.index_version == "idx-e2e"
                assert not response.partial
        mean_recall = float(np.mean(recalls))
        print(f"recall@100 over 10 shard processes: {mean_recall:.4f}")
        assert mean_recall >= 0.95, recalls
    finally:
        await app.shutdown()


async def _shard_top(address: str, query: np.ndarray, k: int) -> list[tuple[float, int]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = index_shard_service_pb2_grpc.IndexShardServiceStub(channel)
        response = await stub.Search(
            index_shard_service_pb2.SearchRequest(
                query_vectors=query.tolist(), query_count=1, k=k, embedding_version="emb-e2e"
            ),
            timeout=5,
        )
    hits = response.results[0]
    return list(zip(hits.scores, hits.item_ids, strict=True))


async def test_a_dead_shard_process_gives_exactly_the_survivors_answer(
    deployment: Deployment, tmp_path: Path
) -> None:
    victim = deployment.spawn(7)  # a separate process for shard 7, killed below
    targets = [[shard.address] for shard in deployment.shards]
    targets[7] = [victim.address]
    app = await retrieve_app(tmp_path, targets)
    try:
        query = deployment.data.queries(1, seed=99)[0]
        victim.kill()
        survivors = [s for s in deployment.shards if s.shard_id != 7]
        merged = []
        for shard in survivors:
            merged.extend(await _shard_top(shard.address, query, 100))
        expected = [item for _, item in sorted(merged, key=lambda hit: -hit[0])[:100]]
        async with client_for(app) as client:
            response = await client.retrieve(
                query_vector=query.tolist(), embedding_version="emb-e2e", k=100
            )
            assert response.partial
            assert list(response.failed_shard_ids) == [7]
            assert [c.item_id for c in response.candidates] == expected
            assert all(c.item_id % NUM_SHARDS != 7 for c in response.candidates)
            with pytest.raises(RecsysClientError) as caught:
                await client.retrieve(
                    query_vector=query.tolist(),
                    embedding_version="emb-e2e",
                    k=100,
                    require_all_shards=True,
                )
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
            assert caught.value.metadata["failed_shard_ids"] == "7"
    finally:
        await app.shutdown()


async def test_replica_failover_after_a_replica_dies(
    deployment: Deployment, tmp_path: Path
) -> None:
    doomed = deployment.spawn(3)
    targets = [[shard.address] for shard in deployment.shards]
    targets[3] = [doomed.address, deployment.shards[3].address]
    app = await retrieve_app(tmp_path, targets)
    healthy = await retrieve_app(tmp_path, [[shard.address] for shard in deployment.shards])
    try:
        doomed.kill()
        query = deployment.data.queries(1, seed=5)[0]
        async with client_for(healthy) as client:
            reference = await client.retrieve(
                query_vector=query.tolist(), embedding_version="emb-e2e", k=200
            )
        expected = [c.item_id for c in reference.candidates]
        assert any(c.shard_id == 3 for c in reference.candidates)
        async with client_for(app) as client:
            for _ in range(4):  # whichever replica goes first, shard 3 answers in full
                response = await client.retrieve(
                    query_vector=query.tolist(), embedding_version="emb-e2e", k=200
                )
                assert not response.partial
                assert [c.item_id for c in response.candidates] == expected
    finally:
        await app.shutdown()
        await healthy.shutdown()


async def test_wrong_embedding_version_is_failed_precondition(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = await retrieve_app(tmp_path, [[shard.address] for shard in deployment.shards])
    try:
        async with client_for(app) as client:
            with pytest.raises(RecsysClientError) as caught:
                await client.retrieve(
                    query_vector=[0.1] * DIMENSION, embedding_version="emb-old", k=10
                )
            assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert caught.value.reason == "EMBEDDING_VERSION_MISMATCH"
    finally:
        await app.shutdown()
