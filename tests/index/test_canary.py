"""The index quality canary (drill): a version that verifies but answers wrongly (the same ids
with their vectors shuffled) fails its golden queries, and the command and the serving shard
roll back to the last version that passes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.cli import app
from recsys.data.synthetic import clustered_embeddings
from recsys.index.builder import build_shard_snapshots
from recsys.index.canary import (
    GOLDEN_FILE,
    NO_GOLDEN,
    GoldenQueries,
    check_canary,
    check_version,
    last_good_before,
    load_golden,
)
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.host import ShardHost
from recsys.index.shard_index import ShardIndex
from recsys.index.snapshots import MANIFEST_FILE, Expectations, SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys.observability.metrics import VersionsCollector

DIMENSION = 16
NUM_SHARDS = 3
SPEC = IndexSpec(dimension=DIMENSION, index_type=IndexType.IVF_FLAT, nlist=8)
runner = CliRunner()


@pytest.fixture
def embeddings() -> ItemEmbeddings:
    data = clustered_embeddings(3_000, DIMENSION, clusters=16, seed=5)
    return ItemEmbeddings(data.item_ids, data.vectors, "emb-1")


@pytest.fixture
def manager(tmp_path: Path) -> SnapshotManager:
    return SnapshotManager(LocalSnapshotStore(tmp_path / "snapshots"), keep_versions=10)


def publish(
    manager: SnapshotManager, embeddings: ItemEmbeddings, version: str, golden: int = 32
) -> None:
    build_shard_snapshots(
        embeddings,
        SPEC,
        num_shards=NUM_SHARDS,
        index_version=version,
        snapshots=manager,
        golden_queries=golden,
    )


def publish_shuffled(
    manager: SnapshotManager, embeddings: ItemEmbeddings, version: str, *, golden_of: str
) -> None:
    """The drill: shard 0 gets a version holding the right ids with each other's vectors, and
    the golden queries of a good build; its manifest matches its files, so it verifies."""
    mine = embeddings.item_ids % NUM_SHARDS == 0
    vectors = embeddings.vectors[mine]
    shuffled = vectors[np.random.default_rng(7).permutation(len(vectors))]
    shard = ShardIndex.build(
        SPEC,
        shard_id=0,
        num_shards=NUM_SHARDS,
        item_ids=embeddings.item_ids[mine],
        vectors=shuffled,
        index_version=version,
        embedding_version=embeddings.embedding_version,
        built_at=dt.datetime.now(dt.UTC),
    )
    golden = manager.store.read_file(0, golden_of, GOLDEN_FILE)
    manager.publish(shard, extra_files={GOLDEN_FILE: golden})


def expect(shard_id: int = 0) -> Expectations:
    return Expectations(
        shard_id=shard_id, num_shards=NUM_SHARDS, dimension=DIMENSION, embedding_version="emb-1"
    )


def snapshots_dir(manager: SnapshotManager) -> str:
    store = manager.store
    assert isinstance(store, LocalSnapshotStore)
    return str(store.root)


def test_a_build_records_golden_queries_its_shards_pass(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    publish(manager, embeddings, "v2")
    for shard_id in range(NUM_SHARDS):
        manifest = manager.manifest(shard_id, "v1")
        assert GOLDEN_FILE in manifest.files  # checksummed like the index files
        golden = load_golden(manager, shard_id, "v1")
        assert golden is not None
        assert (golden.query_count, golden.k, golden.queries.shape) == (32, 10, (32, DIMENSION))
        assert all(hits.item_ids.size == 10 for hits in golden.expected)
        result = check_canary(manager.load(expect(shard_id), "v1"), golden)
        assert result.passed, result.describe()
        assert (result.mean_overlap, result.max_score_delta) == (1.0, 0.0)
        # Seeded: rebuilding the same data records the same queries, byte for byte.
        first = manager.store.read_file(shard_id, "v1", GOLDEN_FILE)
        assert manager.store.read_file(shard_id, "v2", GOLDEN_FILE) == first
        assert GoldenQueries.from_bytes(first).to_bytes() == first  # float32 kept exact


def test_shuffled_vectors_verify_but_fail_the_canary(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    publish_shuffled(manager, embeddings, "v2-shuffled", golden_of="v1")
    _, shard = manager.verify("v2-shuffled", expect(0))  # checksums, routing, counts: all fine
    result = check_version(manager, shard)
    assert not result.passed
    assert result.mean_overlap < 0.5
    assert "overlap@10" in result.reasons[0]
    assert "is below 0.9" in result.describe()


def test_the_command_fails_and_rolls_back_to_the_last_good_version(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    publish_shuffled(manager, embeddings, "v2-shuffled", golden_of="v1")
    folder = snapshots_dir(manager)

    kept = runner.invoke(app, ["index", "canary", "-s", folder, "--no-rollback"])
    assert kept.exit_code == 1, kept.output
    assert "shard 0: v2-shuffled FAILED: overlap@10" in kept.output
    assert manager.store.current(0) == "v2-shuffled"

    rolled = runner.invoke(app, ["index", "canary", "-s", folder])
    assert rolled.exit_code == 1, rolled.output
    assert "shard 0: CURRENT -> v1" in rolled.output
    assert "shard 1: v1 ok (overlap@10 1.000" in rolled.output
    assert "shard 2: v1 ok (overlap@10 1.000" in rolled.output
    assert manager.store.current(0) == "v1"
    served = manager.load(expect(0))
    assert served.index_version == "v1"
    assert check_version(manager, served).passed

    again = runner.invoke(app, ["index", "canary", "-s", folder, "--shard", "0"])
    assert again.exit_code == 0, again.output
    assert again.output.startswith("shard 0: v1 ok")


def test_rollback_skips_older_versions_that_fail_too(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    publish_shuffled(manager, embeddings, "v2-shuffled", golden_of="v1")
    publish_shuffled(manager, embeddings, "v3-shuffled", golden_of="v1")
    good = last_good_before(manager, expect(0), "v3-shuffled")
    assert good is not None
    assert good.index_version == "v1"
    assert good.result.passed
    assert last_good_before(manager, expect(0), "v1") is None
    assert manager.store.current(0) == "v3-shuffled"  # it changes nothing itself


def test_versions_without_golden_queries_are_not_failing(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v0", golden=0)  # as built before the canary existed
    assert load_golden(manager, 0, "v0") is None
    manifest = json.loads(manager.store.read_file(0, "v0", MANIFEST_FILE))
    assert GOLDEN_FILE not in manifest["files"]
    result = check_version(manager, manager.load(expect(0)))
    assert result.passed
    assert not result.checked
    assert result.describe() == NO_GOLDEN
    checked = runner.invoke(app, ["index", "canary", "-s", snapshots_dir(manager)])
    assert checked.exit_code == 0, checked.output
    assert checked.output.count("has no golden queries (not checked)") == NUM_SHARDS


def canary_metrics(host: ShardHost) -> dict[str, float]:
    collector = VersionsCollector(SimpleNamespace(ranking_chain=None, shard_hosts=[host]))
    return {
        sample.name: sample.value
        for family in collector.collect()
        for sample in family.samples
        if sample.name.startswith("recsys_index_canary")
    }


async def test_the_shard_rolls_back_a_wrong_version_it_swapped_to(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    host = ShardHost(
        SPEC, shard_id=0, num_shards=NUM_SHARDS, snapshots=manager,
        expected_embedding_version="emb-1", canary_interval_seconds=300,
    )  # fmt: skip
    await host.start()
    assert host.current.index_version == "v1"
    assert canary_metrics(host) == {
        "recsys_index_canary_failing": 0,
        "recsys_index_canary_failures_total": 0,
    }
    publish_shuffled(manager, embeddings, "v2-shuffled", golden_of="v1")
    swap = await host.load_snapshot()  # CURRENT names the wrong version
    assert swap.index_version == "v1"
    assert host.current.index_version == "v1"
    assert manager.store.current(0) == "v1"
    assert canary_metrics(host) == {
        "recsys_index_canary_failing": 0,
        "recsys_index_canary_failures_total": 1,
    }


async def test_the_gauge_stays_raised_until_a_good_version_serves(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    publish_shuffled(manager, embeddings, "v2-shuffled", golden_of="v1")
    manager.store.delete_version(0, "v1")  # nothing older to roll back to
    host = ShardHost(
        SPEC, shard_id=0, num_shards=NUM_SHARDS, snapshots=manager,
        expected_embedding_version="emb-1", canary_interval_seconds=300,
    )  # fmt: skip
    await host.start()
    assert host.current.index_version == "v2-shuffled"
    assert canary_metrics(host)["recsys_index_canary_failing"] == 1
    assert not (await host.check_canary()).passed
    assert canary_metrics(host)["recsys_index_canary_failures_total"] == 2
    publish(manager, embeddings, "v3")  # the fix: a rebuild
    await host.load_snapshot()
    assert host.current.index_version == "v3"
    assert canary_metrics(host) == {
        "recsys_index_canary_failing": 0,
        "recsys_index_canary_failures_total": 2,
    }


async def test_the_periodic_check_catches_drift_and_ignores_live_updates(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v0")
    publish(manager, embeddings, "v1")
    host = ShardHost(
        SPEC, shard_id=0, num_shards=NUM_SHARDS, snapshots=manager,
        expected_embedding_version="emb-1", canary_interval_seconds=0.05,
    )  # fmt: skip
    await host.start()
    mine = embeddings.item_ids[embeddings.item_ids % NUM_SHARDS == 0]
    # Live updates through the host are not drift: the items they touch are left out.
    rng = np.random.default_rng(3)
    await host.upsert(mine[:300], rng.normal(size=(300, DIMENSION)), "emb-1")
    await host.delete(mine[300:400])
    assert (await host.check_canary()).passed
    assert host.canary_failures == 0

    watcher = asyncio.create_task(host.watch_canary())
    try:
        # Drift behind the host's back: the serving index's vectors change under it.
        vectors = embeddings.vectors[embeddings.item_ids % NUM_SHARDS == 0]
        host.current.upsert(mine[400:], vectors[400:][rng.permutation(len(mine) - 400)])
        for _ in range(100):
            if host.current.index_version == "v0":
                break
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    assert host.current.index_version == "v0"
    assert manager.store.current(0) == "v0"
    assert host.canary_failures == 1
    assert not host.canary_failing


def test_a_canary_interval_of_zero_turns_the_host_check_off(
    manager: SnapshotManager, embeddings: ItemEmbeddings
) -> None:
    publish(manager, embeddings, "v1")
    publish_shuffled(manager, embeddings, "v2-shuffled", golden_of="v1")
    host = ShardHost(SPEC, shard_id=0, num_shards=NUM_SHARDS, snapshots=manager)
    asyncio.run(host.start())
    assert host.current.index_version == "v2-shuffled"
    assert host.canary_failures == 0
