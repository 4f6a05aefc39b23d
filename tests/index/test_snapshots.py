"""Snapshots on the local filesystem store: verification refuses every kind of damage,
quarantines it, and the serving index keeps serving; rollback and pruning."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.data.synthetic import clustered_embeddings
from recsys.errors import NotFound
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.host import ShardHost
from recsys.index.shard_index import INDEX_FILE
from recsys.index.snapshots import MANIFEST_FILE, Expectations, SnapshotInvalid, SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys.observability.metrics import VersionsCollector

DIMENSION = 16
NUM_SHARDS = 3


@pytest.fixture
def embeddings() -> ItemEmbeddings:
    data = clustered_embeddings(3_000, DIMENSION, clusters=16, seed=5)
    return ItemEmbeddings(data.item_ids, data.vectors, "emb-1")


@pytest.fixture
def manager(tmp_path: Path) -> SnapshotManager:
    return SnapshotManager(LocalSnapshotStore(tmp_path / "snapshots"), keep_versions=2)


def publish(manager: SnapshotManager, embeddings: ItemEmbeddings, version: str) -> None:
    spec = IndexSpec(dimension=DIMENSION, index_type=IndexType.IVF_FLAT, nlist=8)
    build_shard_snapshots(
        embeddings, spec, num_shards=NUM_SHARDS, index_version=version, snapshots=manager
    )


def version_folder(manager: SnapshotManager, shard_id: int, version: str) -> Path:
    store = manager.store
    assert isinstance(store, LocalSnapshotStore)
    return store.root / f"shard-{shard_id:03d}" / "versions" / version


def expect(shard_id: int = 0, **changes: object) -> Expectations:
    return Expectations(
        shard_id=shard_id,
        num_shards=NUM_SHARDS,
        dimension=changes.get("dimension", DIMENSION),  # type: ignore[arg-type]
        embedding_version=changes.get("embedding_version", "emb-1"),  # type: ignore[arg-type]
    )


def test_publish_then_load_round_trip(manager: SnapshotManager, embeddings: ItemEmbeddings) -> None:
    publish(manager, embeddings, "v1")
    for shard_id in range(NUM_SHARDS):
        assert manager.store.current(shard_id) == "v1"
        shard = manager.load(expect(shard_id))
        assert shard.index_version == "v1"
        assert shard.item_count == 1_000
        assert set((shard.item_ids() % NUM_SHARDS).tolist()) == {shard_id}
    manifest = json.loads((version_folder(manager, 0, "v1") / MANIFEST_FILE).read_text())
    assert manifest["spec"]["dimension"] == DIMENSION
    assert set(manifest["files"]) == {INDEX_FILE, "golden.json"}
    assert len(manifest["files"][INDEX_FILE]) == 64


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: truncate(folder / INDEX_FILE), "checksum mismatch"),
        (lambda folder: flip_byte(folder / INDEX_FILE), "checksum mismatch"),
        (lambda folder: (folder / INDEX_FILE).unlink(), "missing"),
        (lambda folder: (folder / MANIFEST_FILE).write_text("{not json"), "invalid manifest"),
    ],
    ids=["truncated", "flipped-byte", "missing-file", "broken-manifest"],
)
def test_damaged_files_are_refused_and_quarantined(
    manager: SnapshotManager, embeddings: ItemEmbeddings, damage, message: str
) -> None:
    publish(manager, embeddings, "v1")
    damage(version_folder(manager, 0, "v1"))
    with pytest.raises(SnapshotInvalid, match=message):
        manager.load(expect(0))
    assert "v1" not in manager.store.list_versions(0)
    quarantine = version_folder(manager, 0, "v1").parents[1] / "quarantine"
    (folder,) = quarantine.iterdir()
    assert message.split()[0] in (folder / "REASON").read_text()


def test_wrong_dimension_and_embedding_version_are_refused(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    with pytest.raises(SnapshotInvalid, match="dimension 16, expected 32"):
        manager.load(expect(0, dimension=32))
    with pytest.raises(SnapshotInvalid, match="embedding version emb-1, expected emb-2"):
        manager.load(expect(1, embedding_version="emb-2"))


def test_snapshot_of_another_shard_is_refused(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    # An operator copies shard 1's files into shard 2's slot.
    shutil.copytree(version_folder(manager, 1, "v1"), version_folder(manager, 2, "v-copy"))
    with pytest.raises(SnapshotInvalid, match="built for shard 1, this is shard 2"):
        manager.load(expect(2), "v-copy")


def test_lying_manifest_is_caught_by_the_contents_check(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    folder = version_folder(manager, 0, "v1")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["item_count"] = 5
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(SnapshotInvalid, match="manifest says 5"):
        manager.load(expect(0))


def refusals(host: ShardHost) -> float:
    collector = VersionsCollector(SimpleNamespace(ranking_chain=None, shard_hosts=[host]))
    (value,) = (
        sample.value
        for family in collector.collect()
        for sample in family.samples
        if sample.name == "recsys_index_snapshot_refusals_total"
    )
    return value


async def test_a_refused_version_leaves_the_old_one_serving(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    host = ShardHost(
        IndexSpec(dimension=DIMENSION), shard_id=0, num_shards=NUM_SHARDS, snapshots=manager,
        expected_embedding_version="emb-1",
    )  # fmt: skip
    await host.start()
    assert host.current.index_version == "v1"
    assert refusals(host) == 0
    publish(manager, embeddings, "v2")
    flip_byte(version_folder(manager, 0, "v2") / INDEX_FILE)
    with pytest.raises(SnapshotInvalid):
        await host.load_snapshot()
    assert host.current.index_version == "v1"
    assert refusals(host) == 1  # the alert's metric
    # CURRENT named the refused version: it points back at the serving one.
    assert manager.store.current(0) == "v1"
    query = embeddings.vectors[:1]
    _, hits = await host.search(query, 3, embedding_version="emb-1")
    assert hits[0].item_ids.size == 3


def test_startup_falls_back_to_the_last_good_version(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    publish(manager, embeddings, "v2")
    truncate(version_folder(manager, 0, "v2") / INDEX_FILE)
    shard = manager.load_last_good(expect(0))
    assert shard.index_version == "v1"
    assert manager.store.current(0) == "v1"


def test_rollback_and_pruning(manager: SnapshotManager, embeddings: ItemEmbeddings) -> None:
    for version in ("v1", "v2", "v3"):
        publish(manager, embeddings, version)
    # keep_versions=2: v1 was pruned when v3 became current.
    assert sorted(manager.store.list_versions(0)) == ["v2", "v3"]
    assert manager.rollback(0) == "v2"
    assert manager.store.current(0) == "v2"
    with pytest.raises(Exception, match="no version older"):
        manager.rollback(0)


def test_missing_snapshot_is_not_found(manager: SnapshotManager) -> None:
    with pytest.raises(NotFound):
        manager.load(expect(0))


async def test_hot_swap_under_concurrent_searches_never_fails(
    tmp_path: Path, embeddings: ItemEmbeddings
) -> None:
    import concurrent.futures

    manager = SnapshotManager(LocalSnapshotStore(tmp_path / "swap"), keep_versions=10)
    publish(manager, embeddings, "v1")
    executor = concurrent.futures.ThreadPoolExecutor(4)
    host = ShardHost(
        IndexSpec(dimension=DIMENSION), shard_id=0, num_shards=NUM_SHARDS, snapshots=manager,
        executor=executor,
    )  # fmt: skip
    await host.start()
    for version in ("v2", "v3", "v4"):
        publish(manager, embeddings, version)
    queries = embeddings.vectors[:64]
    served: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def searcher(offset: int) -> None:
        while not stop.is_set():
            try:
                index, hits = await host.search(
                    queries[offset : offset + 1], 10, embedding_version="emb-1"
                )
                assert hits[0].item_ids.size == 10
                served.append(index.index_version)
            except Exception as error:
                failures.append(error)

    tasks = [asyncio.create_task(searcher(offset)) for offset in range(16)]
    try:
        for version in ("v2", "v3", "v4", "v3", "v4"):
            await host.load_snapshot(version)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        executor.shutdown()
    assert failures == []
    assert {"v1", "v2", "v3", "v4"} <= set(served)
    assert len(served) > 100
    assert host.current.index_version == "v4"
