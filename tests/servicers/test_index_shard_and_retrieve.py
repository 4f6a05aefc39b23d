"""IndexShardService and RetrieveService in one process (embedded wiring) over gRPC."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys import services
from recsys.adapters.remote import GrpcCandidateSource
from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.data.synthetic import clustered_embeddings
from recsys.domain.retrieval import RetrievalQuery
from recsys.grpc_server.app import GrpcApplication
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.shard_index import INDEX_FILE
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys.ports.features import UserEmbedding
from recsys.v1 import common_pb2
from recsys.v1 import index_shard_service_pb2 as shard_pb2
from recsys.v1 import index_shard_service_pb2_grpc as shard_grpc
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2
from recsys.v1 import retrieve_service_pb2_grpc as retrieve_grpc
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError
from tests.conftest import make_settings

NUM_SHARDS = 3
DIMENSION = 8


@pytest.fixture
def snapshots(tmp_path: Path) -> SnapshotManager:
    data = clustered_embeddings(1_500, DIMENSION, clusters=8, seed=1)
    manager = SnapshotManager(LocalSnapshotStore(tmp_path / "snapshots"), keep_versions=5)
    spec = IndexSpec(dimension=DIMENSION, index_type=IndexType.FLAT)
    embeddings = ItemEmbeddings(data.item_ids, data.vectors, "e1")
    build_shard_snapshots(
        embeddings, spec, num_shards=NUM_SHARDS, index_version="v1", snapshots=manager
    )
    build_shard_snapshots(
        embeddings, spec, num_shards=NUM_SHARDS, index_version="v2", snapshots=manager,
        make_current=False,
    )  # fmt: skip
    return manager


def settings_for(snapshots: SnapshotManager, folder: Path):  # type: ignore[no-untyped-def]
    store = snapshots.store
    assert isinstance(store, LocalSnapshotStore)
    return make_settings(
        folder,
        index={
            "num_shards": NUM_SHARDS,
            "shard_id": 1,
            "snapshot_dir": str(store.root),
            "spec": {"dimension": DIMENSION, "index_type": "flat"},
            "snapshot_poll_seconds": 0,
        },
        logging={"access_log": False},
    )


@pytest.fixture
async def shard_app(snapshots: SnapshotManager, tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    app = await services.build_application(settings_for(snapshots, tmp_path), ["shard"])
    await app.start()
    yield app
    await app.shutdown()


async def test_info_describes_the_loaded_snapshot(shard_app: GrpcApplication) -> None:
    async with grpc.aio.insecure_channel(shard_app.address) as channel:
        info = await shard_grpc.IndexShardServiceStub(channel).Info(shard_pb2.InfoRequest())
    assert (info.shard_id, info.num_shards, info.dimension) == (1, NUM_SHARDS, DIMENSION)
    assert (info.index_version, info.embedding_version, info.item_count) == ("v1", "e1", 500)
    assert (info.index_type, info.metric, info.on_gpu) == ("flat", "inner_product", False)


async def test_shard_rpcs_validate_and_route(shard_app: GrpcApplication) -> None:
    async with grpc.aio.insecure_channel(shard_app.address) as channel:
        stub = shard_grpc.IndexShardServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Search(shard_pb2.SearchRequest(query_vectors=[1.0] * 5, query_count=1, k=5))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Upsert(
                shard_pb2.UpsertRequest(
                    item_ids=[3], vectors=[0.5] * DIMENSION, embedding_version="e1"
                )
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "other shards" in caught.value.details()
        upserted = await stub.Upsert(
            shard_pb2.UpsertRequest(
                item_ids=[10_000], vectors=[0.5] * DIMENSION, embedding_version="e1"
            )
        )
        assert (upserted.upserted_count, upserted.item_count) == (1, 501)
        found = await stub.Search(
            shard_pb2.SearchRequest(
                query_vectors=[0.5] * DIMENSION, query_count=1, k=3, embedding_version="e1"
            )
        )
        assert found.results[0].item_ids[0] == 10_000
        deleted = await stub.Delete(shard_pb2.DeleteRequest(item_ids=[10_000, 5]))
        assert (deleted.deleted_count, deleted.item_count) == (1, 500)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Search(
                shard_pb2.SearchRequest(
                    query_vectors=[0.5] * DIMENSION, query_count=1, k=3, embedding_version="e0"
                )
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_load_snapshot_swaps_and_refuses_corruption(
    shard_app: GrpcApplication, snapshots: SnapshotManager
) -> None:
    async with grpc.aio.insecure_channel(shard_app.address) as channel:
        stub = shard_grpc.IndexShardServiceStub(channel)
        swapped = await stub.LoadSnapshot(shard_pb2.LoadSnapshotRequest(index_version="v2"))
        assert (swapped.index_version, swapped.previous_index_version) == ("v2", "v1")
        store = snapshots.store
        assert isinstance(store, LocalSnapshotStore)
        index_file = store.root / "shard-001" / "versions" / "v1" / INDEX_FILE
        index_file.write_bytes(index_file.read_bytes()[:-10])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LoadSnapshot(shard_pb2.LoadSnapshotRequest(index_version="v1"))
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "checksum" in caught.value.details()
        info = await stub.Info(shard_pb2.InfoRequest())
        assert info.index_version == "v2"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LoadSnapshot(shard_pb2.LoadSnapshotRequest(index_version="v9"))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_embedded_retrieve_by_user_and_by_vector(
    snapshots: SnapshotManager, tmp_path: Path
) -> None:
    app = await services.build_application(settings_for(snapshots, tmp_path), ["retrieve"])
    await app.start()
    try:
        store = app.components.feature_store
        vector = np.ones(DIMENSION, np.float32)
        now = dt.datetime.now(dt.UTC)
        await store.put_user_embedding("alice", UserEmbedding(vector, "e1", now))
        await store.put_user_embedding("bob", UserEmbedding(vector, "e0", now))
        async with AsyncRecsysClient(
            ClientOptions(target=app.address, timeout_seconds=5)
        ) as client:
            by_user = await client.retrieve(user_id="alice", k=20)
            by_vector = await client.retrieve(
                query_vector=vector.tolist(), embedding_version="e1", k=20
            )
            assert [c.item_id for c in by_user.candidates] == [
                c.item_id for c in by_vector.candidates
            ]
            assert len(by_user.candidates) == 20
            assert {c.shard_id for c in by_user.candidates} <= {0, 1, 2}
            default_k = await client.retrieve(user_id="alice", k=0)
            assert len(default_k.candidates) == 1000
            for kwargs, code, reason in [
                ({"user_id": "carol"}, "NOT_FOUND", "NO_USER_EMBEDDING"),
                ({"user_id": "bob"}, "FAILED_PRECONDITION", "EMBEDDING_VERSION_MISMATCH"),
                ({"user_id": "alice", "k": 2001}, "INVALID_ARGUMENT", "K_INVALID"),
                ({"user_id": "bad id"}, "INVALID_ARGUMENT", "USER_ID_INVALID"),
                (
                    {"query_vector": [float("nan")] * DIMENSION, "embedding_version": "e1"},
                    "INVALID_ARGUMENT",
                    "VALUES_INVALID",
                ),
                (
                    {"query_vector": [1.0] * DIMENSION},
                    "INVALID_ARGUMENT",
                    "EMBEDDING_VERSION_REQUIRED",
                ),
            ]:
                with pytest.raises(RecsysClientError) as caught:
                    await client.retrieve(**kwargs)  # type: ignore[arg-type]
                assert (caught.value.code.name, caught.value.reason) == (code, reason), kwargs
    finally:
        await app.shutdown()


async def test_retrieve_columns_hold_the_candidates(
    snapshots: SnapshotManager, tmp_path: Path
) -> None:
    app = await services.build_application(settings_for(snapshots, tmp_path), ["retrieve"])
    await app.start()
    source = GrpcCandidateSource(app.address, timeout_seconds=5)
    try:
        vector = clustered_embeddings(1, DIMENSION, clusters=1, seed=7).vectors[0]
        request = retrieve_pb2.RetrieveRequest(
            query_vector=common_pb2.EmbeddingVector(values=vector.tolist(), embedding_version="e1"),
            k=50,
        )
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = retrieve_grpc.RetrieveServiceStub(channel)
            messages = await stub.Retrieve(request, timeout=5)
            request.response_layout = retrieve_pb2.CANDIDATE_LAYOUT_COLUMNS
            columns = await stub.Retrieve(request, timeout=5)
        # Old clients (no layout) get the sub-messages only; COLUMNS gets the columns only.
        assert len(messages.candidates) == 50
        assert (len(messages.item_ids), len(messages.scores), len(messages.shard_ids)) == (0, 0, 0)
        assert not columns.candidates
        assert list(columns.item_ids) == [c.item_id for c in messages.candidates]
        assert list(columns.scores) == [c.score for c in messages.candidates]
        assert list(columns.shard_ids) == [c.shard_id for c in messages.candidates]
        assert columns.index_version == messages.index_version == "v1"
        # Recommend's remote candidate source asks for and reads the columns.
        result = await source.retrieve(RetrievalQuery(vector=vector, embedding_version="e1", k=50))
        assert result.item_ids.tolist() == list(columns.item_ids)
        assert result.scores.tolist() == list(columns.scores)
        assert result.shard_ids.tolist() == list(columns.shard_ids)
    finally:
        await source.close()
        await app.shutdown()
